"""A requests-per-minute limit shared by every process on one Redis (GCRA, in Lua).

The generic cell rate algorithm keeps one "theoretical arrival time" (TAT) per key. Here
each caller reserves the next free slot in one atomic call (TAT advances by 60/rpm s)
and sleeps until it, so sends are spaced exactly and no 60-second window sees more than
rpm + 1 calls. Reserving instead of polling matters: waiters that poll a shared limit
wake together and hammer Redis on every slot. Time comes from the Redis server, so
processes agree on it.
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


class RateLimiter:
    """Await `acquire()` before each call; None rpm means unlimited."""

    def __init__(self, client: redis.Redis, name: str, rpm: int | None) -> None:
        self._key = f"tailcal:rpm:{name}"
        self._interval_us = None if rpm is None else 60_000_000 / rpm
        self._script = client.register_script(_RESERVE_SLOT)

    async def acquire(self) -> None:
        if self._interval_us is None:
            return
        wait_us = int(self._script(keys=[self._key], args=[self._interval_us]))  # sub-ms on loopback
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1_000_000)
