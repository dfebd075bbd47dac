"""A requests-per-minute limit shared by every process on one Redis (GCRA, in Lua).

The generic cell rate algorithm keeps one "theoretical arrival time" (TAT) per key. Here
each caller reserves the next free slot in one atomic call and sleeps until it, so sends
are spaced evenly. Reserving instead of polling matters: waiters that poll a shared limit
wake together and hammer Redis on every slot. Time comes from the Redis server, so
processes agree on it.

A waiter wakes late when its event loop is busy, and late wakers bunch up: with slots
exactly 60/rpm s apart, a 60-second window saw 3,012 sends at rpm 3,000 (bench/scoring.py).
So rpm − 1 slots are spread over 60 + LATE_WAKE_S seconds: any real 60 s window then holds
at most rpm sends as long as no waiter wakes more than LATE_WAKE_S late.
"""

from __future__ import annotations

import asyncio

import redis

# Reserves the next slot; returns the microseconds to wait before sending in it.
_RESERVE_SLOT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local following = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', following), 'PX', math.ceil((following - now) / 1000) + 1000)
return string.format('%.0f', tat - now)
"""


LATE_WAKE_S = 1.0


def slot_interval_s(rpm: int) -> float:
    """Seconds between slots: rpm − 1 of them in 60 + LATE_WAKE_S seconds (see module doc)."""
    return (60 + LATE_WAKE_S) / (rpm - 1) if rpm > 1 else 60 + 2 * LATE_WAKE_S


class RateLimiter:
    """Await `acquire()` before each call; None rpm means unlimited."""

    def __init__(self, client: redis.Redis, name: str, rpm: int | None) -> None:
        self._key = f"tailcal:rpm:{name}"
        self._interval_us = None if rpm is None else slot_interval_s(rpm) * 1_000_000
        self._script = client.register_script(_RESERVE_SLOT)

    async def acquire(self) -> None:
        """Wait for this caller's slot."""
        if self._interval_us is None:
            return
        wait_s = int(self._script(keys=[self._key], args=[self._interval_us])) / 1_000_000  # sub-ms on loopback
        if wait_s > 0:
            await asyncio.sleep(wait_s)
