"""Gateways that answer in ways the reference scorer does not, over HTTP and litellm, with a real
Redis ledger: the ledger never books less than the gateway may have billed, no reservation is
left held, and each candidate ends scored or failed with a reason that says what happened."""

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest
import redis

from tasks.errors import ServiceError
from tasks.scoring import passes
from tasks.scoring.budget import BudgetLedger, to_nano
from tasks.scoring.cache import phash64
from tasks.scoring.passes import score_shard
from tests.support import LoopbackHTTPServer, rows, scoring_config, session_for

pytestmark = pytest.mark.integration

PRICES = {"reference-vlm": (0.14, 0.55), "big-vlm": (10.0, 40.0)}
TWO_MODELS = [{"name": name, "input_eur_per_mtok": i, "output_eur_per_mtok": o} for name, (i, o) in PRICES.items()]


def completion(model: str, content: str, usage: object = None, finish_reason: str = "stop", **message) -> dict:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage if usage is not None else {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320},
    }


class ScriptedGateway:
    """Answers each request with `answer(request body)` → (status, body dict or raw bytes), cut
    after `cut_after` bytes when set; bills each 200 as 300 + 20 tokens of the model it names."""

    def __init__(self, answer: Callable[[dict], tuple[int, object]], cut_after: int | None = None) -> None:
        self.billed_eur = 0.0
        self.requests = 0
        lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, body = answer(request)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:cut_after] if cut_after else data)
                self.wfile.flush()
                if cut_after:
                    self.close_connection = True
                with lock:
                    gateway.requests += 1
                    if status == 200:  # a provider bills the model that served, whatever its usage block says
                        served = body.get("model") if isinstance(body, dict) else request["model"]
                        i, o = PRICES.get(served, PRICES["reference-vlm"])
                        gateway.billed_eur += (300 * i + 20 * o) / 1e6

        self.server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _run(redis_client, pool_dir, answer, count=4, cut_after=None, **gateway):
    server = ScriptedGateway(answer, cut_after)
    config = scoring_config(gateway={"max_retries": 1, "timeout_s": 2, **gateway})
    try:
        session = session_for(config, redis_client, server.base_url)
        records = score_shard(session, rows(pool_dir, 0, count))
    finally:
        server.stop()
    state = session.ledger.state()
    assert state.reserved_eur == 0, f"no reservation left held: {state}"
    assert to_nano(state.spent_eur) == sum(to_nano(r.cost_eur) for r in records), "records carry the bookings"
    return server, session, records, state


def test_a_reply_from_another_configured_model_is_booked_at_its_price(redis_client, pool_dir):
    # the gateway serves every call with its own fallback, the pricier big-vlm, and says so
    server, session, records, state = _run(
        redis_client,
        pool_dir,
        lambda r: (200, completion("big-vlm", '{"difficulty": 0.5, "factors": []}')),
        models=TWO_MODELS,
    )
    assert {(r.status, r.model) for r in records} == {("scored", "big-vlm")}, records
    assert server.billed_eur == pytest.approx(4 * (300 * 10 + 20 * 40) / 1e6), "the gateway billed big-vlm's price"
    assert state.spent_eur == pytest.approx(server.billed_eur), f"booked €{state.spent_eur}"
    first = rows(pool_dir, 0, 1)[0]
    assert session.caches[("big-vlm", 0)].lookup(phash64(first.image)) is not None, "cached as big-vlm's score"


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 300, "completion_tokens": -100000, "total_tokens": 0},  # drove the ledger negative
        {"prompt_tokens": 300},  # output booked at nothing
    ],
)
def test_usage_that_cannot_be_right_is_booked_at_the_worst_case(usage, redis_client, pool_dir):
    server, _, records, state = _run(
        redis_client, pool_dir, lambda r: (200, completion(r["model"], '{"difficulty": 0.5, "factors": []}', usage))
    )
    assert all(r.status == "scored" for r in records), records
    assert state.spent_eur >= server.billed_eur > 0, f"booked €{state.spent_eur}, billed €{server.billed_eur}"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ({"finish_reason": "content_filter"}, "content filter"),
        ({"refusal": "I can't rate this"}, "model refused"),
    ],
)
def test_a_valid_object_beside_a_refusal_or_a_filter_is_not_kept_as_a_score(reply, reason, redis_client, pool_dir):
    _, _, records, _ = _run(
        redis_client,
        pool_dir,
        lambda r: (200, completion(r["model"], '{"difficulty": 0.9, "factors": []}', **reply)),
        count=2,
    )
    assert all(r.status == "failed" and reason in r.reason and r.difficulty is None for r in records), records


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"difficulty": -0.0, "factors": []}', "0.0"),
        ('{"difficulty": 1' + "0" * 400 + ', "factors": []}', "out of range"),  # crashed the shard
        ('{"difficulty": 0.5, "factors": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
)
def test_odd_numbers_and_nesting_end_as_a_score_or_a_reason(content, expected, redis_client, pool_dir):
    _, _, records, _ = _run(redis_client, pool_dir, lambda r: (200, completion(r["model"], content)), count=2)
    if expected == "0.0":
        assert all(r.status == "scored" and str(r.difficulty) == "0.0" for r in records), records
    else:
        assert all(r.status == "failed" and expected in r.reason for r in records), records


def test_a_200_litellm_cannot_read_is_booked_and_named_not_called_an_http_500(redis_client, pool_dir):
    usage = {"prompt_tokens": "300", "completion_tokens": "abc", "total_tokens": "x"}  # counts as text
    server, _, records, state = _run(
        redis_client, pool_dir, lambda r: (200, completion(r["model"], '{"difficulty": 0.5, "factors": []}', usage))
    )
    assert all(r.status == "failed" and "unreadable reply: the gateway answered HTTP 200" in r.reason for r in records)
    assert not any("HTTP 500" in r.reason for r in records), records
    assert state.spent_eur >= server.billed_eur > 0, f"booked €{state.spent_eur}, billed €{server.billed_eur}"


def test_a_reply_cut_mid_body_is_booked_and_named(redis_client, pool_dir):
    server, _, records, state = _run(
        redis_client,
        pool_dir,
        lambda r: (200, completion(r["model"], '{"difficulty": 0.5, "factors": []}')),
        cut_after=40,
    )
    cut = "reply cut: the gateway answered HTTP 200"
    assert all(r.status == "failed" and r.reason.startswith(cut) for r in records), records
    assert state.spent_eur >= server.billed_eur > 0, f"booked €{state.spent_eur}, billed €{server.billed_eur}"


def test_a_gateway_never_connected_to_is_booked_nothing_and_called_unreachable(redis_client, pool_dir):
    # a listening socket whose backlog is full: the TCP handshake never completes
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    config = scoring_config(gateway={"max_retries": 0, "timeout_s": 0.5})
    try:
        session = session_for(config, redis_client, f"http://127.0.0.1:{port}/v1")
        records = score_shard(session, rows(pool_dir, 0, 2))
    finally:
        for sock in [*fillers, listener]:
            sock.close()
    assert all(r.status == "failed" and "could not be reached" in r.reason for r in records), records
    assert session.ledger.state().spent_eur == 0, "nothing was sent, so nothing is booked"


def test_a_reservation_waiting_for_an_rpm_slot_outlives_its_lease(redis_client, pool_dir):
    # given leases of 1 s, one rpm slot a second, 8 calls waiting at once and a cap that fits 4 of them
    config = scoring_config(gateway={"rpm": 60, "concurrency": 8, "max_retries": 0}, budget={"cap_eur": 1.0})
    server = ScriptedGateway(lambda r: (200, completion(r["model"], '{"difficulty": 0.5, "factors": []}', {})))
    try:
        session = session_for(config, redis_client, server.base_url)
        worst = session.gateway.worst_case_cost("reference-vlm", _prepared(pool_dir))
        cap = 4 * worst + 1e-9
        session.ledger = BudgetLedger(redis_client, "lease-test-key", cap, 0.8, lease_s=1.0)
        started = time.monotonic()
        records = score_shard(session, rows(pool_dir, 0, 8))
    finally:
        server.stop()
    # then the waits (up to ~8 s) renew the leases: no reservation expires and the cap holds
    raw = redis_client.hgetall(session.ledger.key)
    assert int(raw.get(b"expired_leases", 0)) == 0, f"leases expired while waiting: {raw}"
    assert session.ledger.state().spent_eur <= cap, f"€{session.ledger.state().spent_eur} > cap €{cap}"
    assert sum(r.status == "scored" for r in records) == 4, records
    assert time.monotonic() - started > 2, "the calls did wait for their slots"


def _prepared(pool_dir):
    from tasks.scoring.gateway import prepare_image

    return prepare_image(rows(pool_dir, 0, 1)[0].image, 512)


class _LostRedis(Exception):
    """Stands for redis.ConnectionError: raised where the rpm slot is taken, before anything is sent."""


@pytest.mark.parametrize("error", [_LostRedis("Redis went away while taking the rpm slot"), TypeError("a bug")])
def test_a_failure_taking_the_rpm_slot_is_not_reported_as_an_unreachable_gateway(error, redis_client, pool_dir):
    # given a limiter that fails as it takes the slot, inside the transport, before the request leaves
    server = ScriptedGateway(lambda r: (200, completion(r["model"], '{"difficulty": 0.5, "factors": []}')))
    try:
        session = session_for(scoring_config(gateway={"max_retries": 1, "timeout_s": 2}), redis_client, server.base_url)

        async def failing(*args, **kwargs):
            raise error

        session.limiter.acquire = failing
        # when a shard is scored, then the limiter's own error surfaces, not "the gateway could not be reached"
        with pytest.raises(type(error), match=str(error)):
            score_shard(session, rows(pool_dir, 0, 2))
    finally:
        server.stop()
    assert server.requests == 0, "nothing was sent"
    state = session.ledger.state()
    assert state.reserved_eur == 0 and state.spent_eur == 0, f"nothing booked or left held: {state}"


def _flaky_limiter(session, failures: int | None):
    """The session's real limiter, raising redis.ConnectionError on its first `failures` calls (None: always)."""
    real, left = session.limiter.acquire, [failures]

    async def acquire(*args, **kwargs):
        if left[0] is None or left[0] > 0:
            left[0] = None if left[0] is None else left[0] - 1
            raise redis.ConnectionError("Connection refused (Redis restarting)")
        await real(*args, **kwargs)

    session.limiter.acquire = acquire


def test_redis_lost_for_a_moment_while_taking_the_rpm_slot_is_ridden_out(redis_client, distinct_pool):
    # given a limiter whose Redis refuses its first two calls, as during a restart
    server = ScriptedGateway(lambda r: (200, completion(r["model"], '{"difficulty": 0.5, "factors": []}')))
    try:
        session = session_for(scoring_config(gateway={"rpm": 600}), redis_client, server.base_url)
        _flaky_limiter(session, failures=2)
        # when a shard is scored, then every candidate is scored once, each request booked once
        records = score_shard(session, rows(distinct_pool, 0, 3))
    finally:
        server.stop()
    assert [r.status for r in records] == ["scored"] * 3, records
    state = session.ledger.state()
    assert server.requests == state.calls == 3 and state.reserved_eur == 0, f"{server.requests} sent, {state}"


def test_redis_lost_for_good_while_taking_the_rpm_slot_stops_the_shard_naming_redis(
    redis_client, distinct_pool, monkeypatch
):
    # given a limiter whose Redis stays away longer than the outage scoring rides out
    monkeypatch.setattr(passes, "REDIS_OUTAGE_S", 0.3)
    server = ScriptedGateway(lambda r: (200, completion(r["model"], '{"difficulty": 0.5, "factors": []}')))
    try:
        session = session_for(scoring_config(gateway={"rpm": 600}), redis_client, server.base_url)
        _flaky_limiter(session, failures=None)
        # when a shard is scored, then it stops with a ServiceError naming Redis and the step, nothing sent or held
        with pytest.raises(ServiceError, match=r"Redis unreachable .* while taking an rpm slot"):
            score_shard(session, rows(distinct_pool, 0, 3))
    finally:
        server.stop()
    state = session.ledger.state()
    assert server.requests == state.calls == 0 and state.reserved_eur == 0, f"{server.requests} sent, {state}"
