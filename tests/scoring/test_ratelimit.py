"""The shared rpm limit on a real Valkey/Redis: exact spacing, never above the limit."""

import asyncio
import time

import pytest

from tasks.scoring.ratelimit import RateLimiter

pytestmark = pytest.mark.integration


def test_sends_are_spaced_at_the_rate_across_two_limiters(redis_client):
    rpm = 1200  # one slot every ~51 ms (61 s / 1199)
    first, second = RateLimiter(redis_client, "k", rpm), RateLimiter(redis_client, "k", rpm)
    sends: list[float] = []

    async def caller(limiter):
        await limiter.acquire()
        sends.append(time.monotonic())

    async def main():
        await asyncio.gather(*(caller(first if i % 2 else second) for i in range(20)))

    start = time.monotonic()
    asyncio.run(main())
    elapsed = max(sends) - start
    assert elapsed >= 19 * 0.05 * 0.9, f"20 sends at 1200 rpm need ≥ 0.95 s, took {elapsed:.3f} s"
    assert elapsed < 19 * 0.05 + 0.5, f"and not much more: {elapsed:.3f} s"
    gaps = sorted(b - a for a, b in zip(sorted(sends), sorted(sends)[1:], strict=False))
    assert gaps[len(gaps) // 2] >= 0.04, f"median gap ≈ 50 ms, got {gaps[len(gaps) // 2] * 1000:.1f} ms"


def test_no_limit_means_no_wait(redis_client):
    limiter = RateLimiter(redis_client, "free", None)

    async def main():
        await asyncio.wait_for(asyncio.gather(*(limiter.acquire() for _ in range(100))), timeout=5)

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start < 0.5, "unlimited calls never wait"
