"""Per-virtual-key EUR budget in Redis, shared by every process that uses the key.

Before a call, its worst-case cost is reserved atomically (Lua); after it, the actual cost
is settled and the reservation released. Amounts are integer nano-euros so the ledger is
exact. The ledger is keyed by a hash of the virtual key, never by the key itself.
litellm's BudgetManager is file-based and not concurrency-safe, hence this module.

Each reservation is a lease named by the caller's token: retrying a reserve or a settle
with the same token (a reply lost to a Redis restart) books nothing twice, and a process
that dies mid-call does not hold its reservations forever: they expire after `lease_s`
(longer than any call can take), so the next run is not left waiting on a dead process. A
call waiting for an rpm slot renews its lease while it waits (the queue can be longer than
any lease), so its room is never handed to another call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

import redis

NANO = 1_000_000_000
KEY_PREFIX = "tailcal:budget"
SETTLED_PREFIX = "tailcal:settled"  # settlement tokens (1 h), apart from the ledgers
LEASE_PREFIX = "tailcal:leases"  # open reservations: expiry and amount per token
DEFAULT_LEASE_S = 600.0

# Purges expired leases (a dead process's reservations), then reserves under the caller's
# token. Returns 1 when reserved (or already reserved under this token); 0 when the cap is
# reached for good (settled spend alone leaves no room); -1 when only in-flight
# reservations block it (the caller may wait and retry).
# KEYS: ledger hash, lease expiries (zset token → ms), lease amounts (hash token → nano).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, token in ipairs(expired) do
  redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(redis.call('HGET', KEYS[3], token) or '0'))
  redis.call('HDEL', KEYS[3], token)
  redis.call('HINCRBY', KEYS[1], 'expired_leases', 1)
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
if redis.call('ZSCORE', KEYS[2], ARGV[3]) then return 1 end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
if spent + amount > cap then return 0 end
if spent + reserved + amount > cap then return -1 end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], amount)
return 1
"""

# Releases the token's lease (unless it already expired), books the actual cost, counts the
# call unless ARGV[4] says it was never sent, and fires the alert exactly once. KEYS[2] marks
# the token settled: a retry books nothing twice.
# KEYS: ledger hash, settled marker, lease expiries, lease amounts.
_SETTLE = """
if not redis.call('SET', KEYS[2], 1, 'NX', 'EX', 3600) then
  return {tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), 0}
end
local amount = redis.call('HGET', KEYS[4], ARGV[3])
if amount then
  redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(amount))
  redis.call('HDEL', KEYS[4], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
local spent = redis.call('HINCRBY', KEYS[1], 'spent', tonumber(ARGV[1]))
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'calls', 1) end
local fired = 0
if spent >= tonumber(ARGV[2]) and redis.call('HSETNX', KEYS[1], 'alerted', 1) == 1 then fired = 1 end
return {spent, fired}
"""


# Extends a held lease by the lease time; 0 when it is gone (expired and purged, or settled).
# KEYS: lease expiries. ARGV: token, lease ms.
_RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""


class Reservation(Enum):
    GRANTED = 1
    EXHAUSTED = 0
    WAIT = -1


@dataclass(frozen=True)
class Settlement:
    spent_eur: float
    alert_fired: bool


@dataclass(frozen=True)
class LedgerState:
    """`calls` counts settled requests, unpaid ones (an error answer, a dropped connection) included;
    an attempt stopped before it was sent (a stop, Redis lost while taking its rpm slot) is not one."""

    spent_eur: float
    reserved_eur: float
    calls: int
    alerted: bool


def ledger_id(virtual_key: str) -> str:
    """A stable, non-reversible id for a virtual key (the key itself is never stored)."""
    return hashlib.sha256(virtual_key.encode()).hexdigest()[:16]


def to_nano(eur: float) -> int:
    return round(eur * NANO)


class BudgetLedger:
    """Reserve/settle against one virtual key's cap."""

    def __init__(
        self,
        client: redis.Redis,
        virtual_key: str,
        cap_eur: float,
        alert_fraction: float,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self._client = client
        self._id = ledger_id(virtual_key)
        self.key = f"{KEY_PREFIX}:{self._id}"
        self._leases = f"{LEASE_PREFIX}:{self._id}"
        self._amounts = f"{LEASE_PREFIX}:{self._id}:amounts"
        self.cap_eur = cap_eur
        self._cap = to_nano(cap_eur)
        self._alert_at = to_nano(cap_eur * alert_fraction)
        self.lease_s = lease_s
        self._lease_ms = round(lease_s * 1000)
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._renew = client.register_script(_RENEW)

    def reserve(self, worst_case_eur: float, token: str) -> Reservation:
        """Try to reserve a call's worst-case cost under `token` (unique per call attempt)."""
        keys = [self.key, self._leases, self._amounts]
        return Reservation(
            int(self._reserve(keys=keys, args=[to_nano(worst_case_eur), self._cap, token, self._lease_ms]))
        )

    def renew(self, token: str) -> bool:
        """Extend `token`'s lease by `lease_s` from now, while its call waits (for an rpm slot).
        False when the lease is gone: it expired, and its room may already be someone else's."""
        return bool(self._renew(keys=[self._leases], args=[token, self._lease_ms]))

    def settle(self, token: str, actual_eur: float, sent: bool = True) -> Settlement:
        """Release `token`'s reservation and book the actual cost (0 for a call that failed
        unpaid); `sent=False` for an attempt that never left, which is not counted in `calls`.
        Settling the same token again books nothing."""
        keys = [self.key, f"{SETTLED_PREFIX}:{self._id}:{token}", self._leases, self._amounts]
        spent, fired = self._settle(keys=keys, args=[to_nano(actual_eur), self._alert_at, token, int(sent)])
        return Settlement(spent_eur=int(spent) / NANO, alert_fired=bool(fired))

    def state(self) -> LedgerState:
        raw = self._client.hgetall(self.key)
        return LedgerState(
            spent_eur=int(raw.get(b"spent", 0)) / NANO,
            reserved_eur=int(raw.get(b"reserved", 0)) / NANO,
            calls=int(raw.get(b"calls", 0)),
            alerted=raw.get(b"alerted") == b"1",
        )
