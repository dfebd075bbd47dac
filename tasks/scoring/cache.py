"""Near-duplicate score cache in Redis/Valkey, keyed by (namespace, 64-bit pHash).

A hit is any stored hash within `max_distance` bits (Hamming). Look-up never scans: the
hash is cut into `max_distance + 1` bands and each band value indexes a Redis set, so by
the pigeonhole principle any hash within the distance shares at least one band exactly
(multi-index hashing). No Redis module does Hamming search over bit bands, so this is
hand-written: a Lua script on the server reads a query's band buckets, ranks their members by
Hamming distance and returns the nearest entry within the distance, so a look-up is one round
trip (a batch, one per `LOOKUP_BATCH` hashes). Before, a pipelined round trip fetched the
buckets and a second the entry: p99 2.84 ms per single look-up under load (bench/scoring.py (b)).

The script reads the entry keys it derives from the buckets' members besides the band keys it
is given, which a standalone Redis or Valkey allows (a Redis Cluster would not).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import imagehash
import redis

from tasks.imaging import load_image

KEY_PREFIX = "tailcal:cache"
# Hashes per script call: bounds how long one call holds the (single-threaded) server, where
# the budget ledger and the rpm limit wait behind it; ~20 µs of Lua per hash.
LOOKUP_BATCH = 64

# KEYS: `bands` band-set keys per query, query by query. ARGV: max distance, bands, the entry
# key prefix, then each query's hash as 8 big-endian bytes. Returns, per query, false or
# {difficulty, factors, model, distance} of the nearest member within the distance (ties: the
# smaller hash), false too when that member's entry expired before its band sets did.
_LOOKUP = """
local max_distance, bands, entry_prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local ones = {[0] = 0}
for value = 1, 255 do ones[value] = ones[math.floor(value / 2)] + value % 2 end
local out = {}
for query = 1, #ARGV - 3 do
  local wanted = {string.byte(ARGV[query + 3], 1, 8)}
  local best, best_distance, seen = nil, max_distance + 1, {}
  for band = (query - 1) * bands + 1, query * bands do
    for _, member in ipairs(redis.call('SMEMBERS', KEYS[band])) do
      if not seen[member] then
        seen[member] = true
        local distance = 0
        for i = 1, 8 do distance = distance + ones[bit.bxor(string.byte(member, i), wanted[i])] end
        if distance < best_distance or (best and distance == best_distance and member < best) then
          best, best_distance = member, distance
        end
      end
    end
  end
  out[query] = false
  if best then
    local entry = redis.call('HMGET', entry_prefix .. string.format('%02x%02x%02x%02x%02x%02x%02x%02x',
      string.byte(best, 1, 8)), 'd', 'f', 'm')
    if entry[1] then out[query] = {entry[1], entry[2], entry[3], best_distance} end
  end
end
return out
"""


def phash64(image_bytes: bytes) -> int:
    """The 64-bit perceptual hash (imagehash.phash) of an encoded image, as an int.

    The picture is `tasks.imaging.load_image`'s (upright, sRGB, alpha composited), as every
    stage sees it. JPEGs are decoded at reduced scale (draft mode, still ≥ 64 px): pHash only
    looks at a 32×32 thumbnail, and this is 3× faster than a full decode (measured: 0.49 vs
    1.45 ms per 192-px frame; the hashes differ by 0.3 bits on average, always the same way).
    """
    return int(str(imagehash.phash(load_image(image_bytes, draft=(64, 64), grey=True))), 16)


def max_distance_for(similarity: float) -> int:
    """floor(64 · (1 − similarity)): 0.92 → 5 bits."""
    return math.floor(64 * (1 - similarity) + 1e-9)


@dataclass(frozen=True)
class CachedScore:
    """A stored score and how far its hash was from the query."""

    difficulty: float
    factors: tuple[str, ...]
    model: str
    distance: int


class ScoreCache:
    """One namespace (template name+version, model, pass) of the cache."""

    def __init__(self, client: redis.Redis, namespace: str, max_distance: int, ttl_s: int) -> None:
        self._client = client
        self._prefix = f"{KEY_PREFIX}:{namespace}"
        self._max_distance = max_distance
        self._ttl_s = ttl_s
        self._bands = _band_layout(max_distance + 1)
        self._script = client.register_script(_LOOKUP)

    @property
    def namespace_prefix(self) -> str:
        return self._prefix

    def _band_keys(self, phash: int) -> list[str]:
        return [f"{self._prefix}:b{i}:{(phash >> shift) & mask:x}" for i, (shift, mask) in enumerate(self._bands)]

    def _entry_key(self, phash: int) -> str:
        return f"{self._prefix}:e:{phash:016x}"

    def lookup(self, phash: int) -> CachedScore | None:
        """The nearest stored score within the distance, or None."""
        return self.lookup_many([phash])[0]

    def lookup_many(self, hashes: list[int]) -> list[CachedScore | None]:
        """Batch look-up, one round trip per `LOOKUP_BATCH` hashes (a Lua script on the server)."""
        results: list[CachedScore | None] = []
        for start in range(0, len(hashes), LOOKUP_BATCH):
            batch = hashes[start : start + LOOKUP_BATCH]
            keys = [key for phash in batch for key in self._band_keys(phash)]
            args = [self._max_distance, len(self._bands), f"{self._prefix}:e:"]
            replies = self._script(keys=keys, args=args + [int(phash).to_bytes(8, "big") for phash in batch])
            results.extend(_cached_score(reply) for reply in replies)
        return results

    def store(self, phash: int, difficulty: float, factors: tuple[str, ...], model: str) -> None:
        """Store a score under its hash; band sets live as long as their newest member."""
        packed = int(phash).to_bytes(8, "big")
        entry_key = self._entry_key(phash)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(entry_key, mapping={"d": repr(float(difficulty)), "f": ",".join(factors), "m": model})
        pipe.hset(entry_key, "t", int(time.time()))
        pipe.expire(entry_key, self._ttl_s)
        for key in self._band_keys(phash):
            pipe.sadd(key, packed)
            pipe.expire(key, self._ttl_s)
        pipe.execute()


def _cached_score(reply: list | None) -> CachedScore | None:
    """The script's answer for one query: None, or [difficulty, factors, model, distance]."""
    if not reply:
        return None
    difficulty, factors, model, distance = reply
    return CachedScore(
        difficulty=float(difficulty),
        factors=tuple(factors.decode().split(",")) if factors else (),
        model=model.decode(),
        distance=int(distance),
    )


def _band_layout(bands: int) -> list[tuple[int, int]]:
    """(shift, mask) per band, splitting 64 bits as evenly as possible."""
    bands = max(1, min(bands, 64))
    widths = [64 // bands + (1 if i < 64 % bands else 0) for i in range(bands)]
    layout, shift = [], 0
    for width in widths:
        layout.append((shift, (1 << width) - 1))
        shift += width
    return layout
