"""A requests-per-minute limit shared by every process on one Redis (GCRA, in Lua).

The generic cell rate algorithm keeps one "theoretical arrival time" per key and spaces
calls exactly 60/rpm seconds apart, so no 60-second window ever sees more than rpm calls
(+1 at the window edge). Time comes from the Redis server, so processes agree on it.
"""

from __future__ import annotations

import asyncio

import redis

# Returns 0 when the call may go now, else microseconds to wait before asking again.
_ACQUIRE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now >= interval then return tat - now - interval + 1 end
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
return 0
"""


class RateLimiter:
    """Await `acquire()` before each call; None rpm means unlimited."""

    def __init__(self, client: redis.Redis, name: str, rpm: int | None) -> None:
        self._key = f"tailcal:rpm:{name}"
        self._interval_us = None if rpm is None else 60_000_000 / rpm
        self._script = client.register_script(_ACQUIRE)

    async def acquire(self) -> None:
        if self._interval_us is None:
            return
        while True:
            wait_us = int(self._script(keys=[self._key], args=[self._interval_us]))  # sub-ms on loopback
            if wait_us <= 0:
                return
            await asyncio.sleep(wait_us / 1_000_000)
