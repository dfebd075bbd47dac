"""The near-duplicate cache on a real Valkey/Redis: hits, misses, namespaces, no scans."""

import random

import pyarrow.dataset as ds
import pytest

from tasks.errors import PromptTemplateError
from tasks.scoring.cache import LOOKUP_BATCH, ScoreCache, max_distance_for, phash64
from tasks.scoring.prompts import PromptTemplate, lock_template

pytestmark = pytest.mark.integration


def _flip(value: int, bits: int, rng: random.Random) -> int:
    for position in rng.sample(range(64), bits):
        value ^= 1 << position
    return value


def test_default_similarity_allows_five_bits():
    assert max_distance_for(0.92) == 5, "floor(64 · 0.08) = 5"
    assert max_distance_for(1.0) == 0, "similarity 1.0 means exact hashes only"


def test_burst_frames_hit_and_distinct_scenes_miss(redis_client, pool_dir):
    table = ds.dataset(pool_dir, format="parquet").to_table(columns=["scene_id", "image"])
    scenes, images = table.column("scene_id").to_pylist(), table.column("image").to_pylist()
    burst = next(i for i in range(1, len(scenes)) if scenes[i] == scenes[i - 1])
    cache = ScoreCache(redis_client, "difficulty-v1:m:p0", max_distance=5, ttl_s=600)
    cache.store(phash64(images[burst - 1]), 0.7, ("low_light",), "m")

    hit = cache.lookup(phash64(images[burst]))
    assert hit is not None and hit.difficulty == 0.7, "the next frame of a burst hits the stored score"
    assert hit.factors == ("low_light",) and hit.model == "m", "the stored factors and model come back"
    distinct = next(i for i in range(len(scenes)) if scenes[i] != scenes[burst])
    assert cache.lookup(phash64(images[distinct])) is None, "a frame of another scene misses"


def test_other_prompt_version_and_pass_miss(redis_client):
    value = 0x0123456789ABCDEF
    ScoreCache(redis_client, "difficulty-v1:m:p0", 5, 600).store(value, 0.4, (), "m")
    assert ScoreCache(redis_client, "difficulty-v1:m:p0", 5, 600).lookup(value) is not None, "same namespace hits"
    assert ScoreCache(redis_client, "difficulty-v2:m:p0", 5, 600).lookup(value) is None, "another version misses"
    assert ScoreCache(redis_client, "difficulty-v1:m:p1", 5, 600).lookup(value) is None, "another pass misses"


def test_indexed_lookup_equals_brute_force_nearest(redis_client):
    rng = random.Random(5)
    cache = ScoreCache(redis_client, "t:m:p0", max_distance=5, ttl_s=600)
    stored = [rng.getrandbits(64) for _ in range(1500)]
    pipe_scores = {h: round(rng.random(), 4) for h in stored}
    for value, score in pipe_scores.items():
        cache.store(value, score, (), "m")
    for trial in range(300):
        base = stored[trial]
        query = _flip(base, rng.randint(0, 9), rng)
        best = min(stored, key=lambda h: ((h ^ query).bit_count(), h))
        expected = pipe_scores[best] if (best ^ query).bit_count() <= 5 else None
        found = cache.lookup(query)
        assert (found.difficulty if found else None) == expected, f"query {query:016x}: MIH disagrees with a scan"


def test_entries_expire_with_the_ttl(redis_client):
    cache = ScoreCache(redis_client, "t:m:p0", max_distance=5, ttl_s=120)
    cache.store(42, 0.5, (), "m")
    ttls = [redis_client.ttl(key) for key in redis_client.scan_iter(match="tailcal:cache:t:m:p0:*")]
    assert ttls and all(0 < ttl <= 120 for ttl in ttls), f"every cache key carries the TTL: {ttls}"


def test_editing_a_used_template_in_place_is_refused(redis_client):
    v1 = PromptTemplate("difficulty", 1, "sys", "user", {"type": "object"})
    lock_template(redis_client, v1, "tailcal:cache")
    ScoreCache(redis_client, "difficulty-v1:m:p0", 5, 600).store(7, 0.2, (), "m")
    edited = PromptTemplate("difficulty", 1, "sys", "user, reworded", {"type": "object"})
    with pytest.raises(PromptTemplateError, match="difficulty-v2"):
        lock_template(redis_client, edited, "tailcal:cache")
    lock_template(redis_client, PromptTemplate("difficulty", 2, "sys", "user, reworded", {}), "tailcal:cache")


def test_the_nearer_of_two_entries_wins_in_one_batch(redis_client):
    cache = ScoreCache(redis_client, "t:m:p0", max_distance=5, ttl_s=600)
    query = 0x0F0F_0F0F_0F0F_0F0F
    cache.store(query ^ 0b1111, 0.9, ("far",), "m")  # 4 bits away
    cache.store(query ^ (1 << 40), 0.1, ("near",), "m")  # 1 bit away
    cache.store(query ^ 0b11_1111, 0.5, (), "m")  # 6 bits away: beyond the distance
    found = cache.lookup_many([query, query ^ (1 << 40), query ^ 0b11_1111, ~query & (2**64 - 1)])
    assert found[0] is not None and found[0].factors == ("near",), "the nearer entry wins over a farther one"
    assert found[0].distance == 1, f"the distance comes back: {found[0]}"
    assert found[1] is not None and found[1].distance == 0, "an exact match is distance 0"
    assert found[2] is not None and found[2].distance == 0, "a stored hash beyond one neighbour's reach still hits"
    assert found[3] is None, "a hash far from every entry misses"


def test_max_distance_hits_and_one_bit_more_misses(redis_client):
    cache = ScoreCache(redis_client, "t:m:p0", max_distance=5, ttl_s=600)
    cache.store(0, 0.3, (), "m")
    at_limit, beyond = cache.lookup_many([0b1_1111 << 30, 0b11_1111 << 30])
    assert at_limit is not None and at_limit.distance == 5, "a hash max_distance bits away hits"
    assert beyond is None, "a hash max_distance + 1 bits away misses"


def test_a_batch_larger_than_one_script_call_keeps_its_order(redis_client):
    cache = ScoreCache(redis_client, "t:m:p0", max_distance=5, ttl_s=600)
    rng = random.Random(9)
    stored = [rng.getrandbits(64) for _ in range(LOOKUP_BATCH + 10)]
    for n, value in enumerate(stored):
        cache.store(value, n / 1000, (), "m")
    queries = [value if n % 3 else rng.getrandbits(64) for n, value in enumerate(stored)]
    found = cache.lookup_many(queries)
    expected = [n / 1000 if n % 3 else None for n in range(len(stored))]
    assert [hit.difficulty if hit else None for hit in found] == expected, "hits and misses stay in query order"


def test_an_entry_gone_before_its_bands_is_a_miss(redis_client):
    cache = ScoreCache(redis_client, "t:m:p0", max_distance=5, ttl_s=600)
    cache.store(42, 0.5, (), "m")
    redis_client.delete(f"{cache.namespace_prefix}:e:{42:016x}")
    assert cache.lookup(42) is None, "a band member without its entry is not a hit"
