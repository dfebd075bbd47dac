"""`gateway.reply_deadline_s` bounds the whole reply, where `timeout_s` bounds each read: a
gateway that trickles its reply (the body a few bytes at a time, or the status line and
headers) is timed out, retried as a timeout, and the candidate is recorded as failed with the
reason, its reservation released.

A real socket server on loopback sends the trickle; the client is tailcal's own scoring path.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from tasks.scoring.budget import to_nano
from tests.support import rows, scoring_config, session_for

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0
DEADLINE_S = 1.5
STEP_S = 0.4  # between chunks: far below the timeout, so no single read ever times out; ~15 s a reply
REPLY = json.dumps(
    {
        "id": "trickle",
        "object": "chat.completion",
        "created": 0,
        "model": "reference-vlm",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '{"difficulty": 0.5, "factors": []}'},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }
).encode()


class TricklingGateway:
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers every request correctly, but
    `part` ("body" or "headers") arrives 8 bytes every STEP_S: about 15 s for the whole reply."""

    def __init__(self, part: str) -> None:
        self.part, self.requests = part, 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        assert self.ready.wait(10), "the trickling gateway did not start"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._answer, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another on the connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                self.requests += 1
                headers = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
                    REPLY
                )
                slow, fast = (REPLY, headers) if self.part == "body" else (headers, b"")
                if self.part == "body":
                    writer.write(fast)
                for start in range(0, len(slow), 8):
                    writer.write(slow[start : start + 8])
                    await writer.drain()
                    await asyncio.sleep(STEP_S)
                if self.part == "headers":
                    writer.write(REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_trickled_reply_is_timed_out_retried_and_recorded_as_failed(part, pool_dir, redis_client):
    # given a gateway whose replies trickle in for ~15 s, a 1 s timeout, a 1.5 s deadline and one retry
    from tasks.scoring.passes import score_shard

    gateway = TricklingGateway(part)
    gateway_settings = {"timeout_s": TIMEOUT_S, "reply_deadline_s": DEADLINE_S, "max_retries": 1, "concurrency": 2}
    config = scoring_config(gateway=gateway_settings)
    session = session_for(config, redis_client, gateway.api_base)
    candidates = rows(pool_dir, 0, 2)
    try:
        # when two candidates are scored
        started = time.perf_counter()
        records = score_shard(session, candidates)
        took = time.perf_counter() - started
    finally:
        gateway.stop()
    # then each attempt stopped at the deadline (plus the back-off), not when the trickle ended (~15 s)
    assert took < 12, f"scoring took {took:.1f} s: the {part} trickle was not cut at the deadline"
    assert gateway.requests == 2 * 2, f"each candidate tried twice (one retry): {gateway.requests} requests"
    # and each candidate is failed with a reason naming the timeout; each of the 4 attempts reached the
    # gateway, which may bill it, so each is booked at its worst case and nothing stays reserved
    assert [r.status for r in records] == ["failed", "failed"], records
    assert all("timeout" in r.reason.lower() or "timed out" in r.reason.lower() for r in records), records
    assert all("2 attempts the gateway may have billed" in r.reason for r in records), [r.reason for r in records]
    state = session.ledger.state()
    assert state.calls == 4 and state.reserved_eur == 0, f"four attempts settled, nothing held: {state}"
    assert state.spent_eur > 0 and to_nano(state.spent_eur) == sum(to_nano(r.cost_eur) for r in records), (
        f"the records carry what was booked: {state}, {[r.cost_eur for r in records]}"
    )


def test_more_calls_in_flight_than_httpx_pools_by_default_are_all_sent_and_answered(distinct_pool, redis_client):
    # given a gateway answering in 0.3 s and 150 calls allowed in flight (httpx pools 100 by default;
    # a call waiting for a connection inside the deadline would time out unsent)
    from collections import Counter

    from tasks.loopback import LoopbackServer
    from tasks.scoring.passes import score_shard
    from tasks.testing.reference_scorer import ScorerSettings, create_app

    stats, answered = Counter(), []
    server = LoopbackServer(create_app(ScorerSettings(latency_s=0.3), stats, answered), "reference scorer", 0)
    server.start()
    config = scoring_config(gateway={"timeout_s": 10, "max_retries": 0, "concurrency": 150})
    session = session_for(config, redis_client, f"{server.base_url}/v1")
    try:
        records = score_shard(session, rows(distinct_pool, 0, 150))
    finally:
        server.stop()
    # then every call was scored, and more than 100 were in flight at once
    assert Counter(r.status for r in records) == {"scored": 150}, Counter(r.reason for r in records)
    assert stats["peak_in_flight"] > 100, f"peak in flight {stats['peak_in_flight']}: the client pooled the calls"
