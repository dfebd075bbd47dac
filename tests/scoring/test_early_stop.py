"""A gateway that fails every request the same way stops the scoring job early.

After `gateway.max_identical_errors` identical non-retryable failures in a row (counted
across the process's shards), every shard stops sending and the job raises GatewayError
naming the gateway's message and the setting; calls already in flight finish and settle,
nothing else is paid or reserved. The same failures scattered among scored calls do not stop
a run: each is recorded with its reason.
"""

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tasks.errors import GatewayError
from tasks.ingest.models import IngestReport
from tasks.loopback import free_port
from tasks.scoring import passes
from tasks.scoring.job import refuse_failed_share, score_pool
from tasks.scoring.passes import score_shard
from tasks.scoring.prompts import load_template
from tasks.scoring.shards import score_logged_shard
from tasks.testing.reference_scorer import BAD_REQUEST_MESSAGE, FaultPlan, ScorerSettings
from tests.support import PROMPTS_DIR, rows, scoring_config, session_for, start_scorer

pytestmark = pytest.mark.integration

CONCURRENCY = 4
SHARD = 20


@dataclass(frozen=True)
class _Candidate:
    """What the scoring job reads of a candidate: id, image and the tags it carries into the table."""

    id: str
    image: bytes
    condition: str | None = None
    class_hint: str | None = None
    source: str | None = None


@pytest.fixture(autouse=True)
def fresh_error_counts():
    """A stop holds for STOP_HOLD_S per gateway endpoint: drop it so no later test inherits it."""
    yield
    passes._background_loop().error_streaks.clear()


def _run_job(config, redis_url: str, api_base: str, candidates, tmp_path):
    """The scoring job with each shard on a 2-thread pool, as the flows' Prefect task runner does."""
    template = load_template(config.scoring.prompt, PROMPTS_DIR)
    report = IngestReport(rows_expected=len(candidates))
    batches = [candidates[i : i + SHARD] for i in range(0, len(candidates), SHARD)]
    with ThreadPoolExecutor(max_workers=2) as pool:

        def run_shard(index: int, shard: list):
            log_path = tmp_path / f"shard-{index:05d}.parquet"
            return pool.submit(
                score_logged_shard, config.scoring_setup, redis_url, api_base, "test-key", template, shard, log_path
            )

        return score_pool(batches, report, config.scoring.passes, SHARD, run_shard)


def test_identical_bad_requests_stop_the_job_with_the_server_message(redis_url, redis_client, distinct_pool, tmp_path):
    # given a gateway that rejects every request's response_format with HTTP 400, and a limit of 5
    limit = 5
    config = scoring_config(gateway={"concurrency": CONCURRENCY, "max_identical_errors": limit})
    candidates = [_Candidate(r.id, r.image) for r in rows(distinct_pool, 0, 80)]
    server = start_scorer(ScorerSettings(latency_s=0.05, faults=FaultPlan(bad_request=1.0)))
    try:
        # when the pool is scored
        with pytest.raises(GatewayError) as stopped:
            _run_job(config, redis_url, server.base_url, candidates, tmp_path)
        sent = server.stats["requests"]
        # then the job stops with the server's message and the setting
        message = str(stopped.value)
        assert f"BadRequestError (HTTP 400): {BAD_REQUEST_MESSAGE}" in message, f"names the cause: {message}"
        assert f"gateway.max_identical_errors (now {limit})" in message, f"names the setting: {message}"
        assert "test-key" not in message, f"no key in the message: {message}"
        # and nothing is sent beyond the limit and what was already in flight
        assert limit <= sent <= limit + CONCURRENCY - 1, f"{sent} requests for a limit of {limit}"
        session = session_for(config, redis_client, server.base_url)
        state = session.ledger.state()
        assert state.spent_eur == 0 and state.reserved_eur == 0, f"nothing paid, every reservation settled: {state}"
        assert not list(tmp_path.glob("shard-*.parquet")), "a stopped shard leaves no score log: a rerun scores it"

        # when a shard is scored again at once (a Prefect task retry, a queued shard)
        with pytest.raises(GatewayError, match="max_identical_errors"):
            score_shard(session, [_Candidate(r.id, r.image) for r in rows(distinct_pool, 100, 5)])
        # then it stops without sending anything
        assert server.stats["requests"] == sent, f"the stop holds: {server.stats['requests']} != {sent}"

        # and once the stop has been idle past its hold, a new run starts with a fresh count
        passes.STOP_HOLD_S, hold = 0.5, passes.STOP_HOLD_S
        time.sleep(0.6)
        try:
            with pytest.raises(GatewayError, match="max_identical_errors"):
                score_shard(session, [_Candidate(r.id, r.image) for r in rows(distinct_pool, 200, 20)])
        finally:
            passes.STOP_HOLD_S = hold
        again = server.stats["requests"] - sent
        assert limit <= again <= limit + CONCURRENCY - 1, f"a later run sends up to the limit again: {again}"
    finally:
        server.stop()


def test_identical_paid_replies_cut_at_the_length_limit_stop_the_job_and_are_all_booked(
    redis_url, redis_client, distinct_pool, tmp_path
):
    # given a model whose every reply is cut at the length limit (each one billed), and a limit of 3
    limit = 3
    config = scoring_config(gateway={"concurrency": CONCURRENCY, "max_identical_errors": limit})
    candidates = [_Candidate(r.id, r.image) for r in rows(distinct_pool, 300, 60)]
    server = start_scorer(ScorerSettings(latency_s=0.05, faults=FaultPlan(length_cut=1.0)))
    api_base = server.base_url
    try:
        # when the pool is scored
        with pytest.raises(GatewayError) as stopped:
            _run_job(config, redis_url, api_base, candidates, tmp_path)
    finally:
        server.stop()
    # then the job stops naming the length limit, its setting and the stop's setting
    message = str(stopped.value)
    assert "length limit" in message and "gateway.models[].max_output_tokens" in message, message
    assert f"gateway.max_identical_errors (now {limit})" in message, message
    # and only the limit plus what was in flight was paid, every paid reply booked, nothing left reserved
    paid = len(server.answered)
    assert limit <= paid <= limit + CONCURRENCY - 1, f"{paid} paid replies for a limit of {limit}"
    state = session_for(config, redis_client, api_base).ledger.state()
    assert state.calls == paid and state.spent_eur > 0, f"each paid reply is settled once: {state}, {paid} paid"
    assert state.reserved_eur == 0, f"no reservation is left: {state}"


def test_calls_waiting_for_an_rpm_slot_send_nothing_once_the_gateway_is_stopped(redis_client, distinct_pool):
    # given a gateway that rejects every request, a stop after 1 failure, and rpm 60: the calls
    # already at the wire wait 1, 2 and 3 s for their rpm slots
    config = scoring_config(
        gateway={"concurrency": CONCURRENCY, "rpm": 60, "max_identical_errors": 1, "max_retries": 0}
    )
    server = start_scorer(ScorerSettings(latency_s=0.02, faults=FaultPlan(bad_request=1.0)))
    try:
        session = session_for(config, redis_client, server.base_url)
        # when a shard is scored
        with pytest.raises(GatewayError, match="max_identical_errors"):
            score_shard(session, [_Candidate(r.id, r.image) for r in rows(distinct_pool, 400, 20)])
    finally:
        server.stop()
    # then only the first request left: the others reached their rpm slots after the stop
    assert server.stats["requests"] == 1, f"{server.stats['requests']} requests sent for a stop after 1"
    state = session.ledger.state()
    assert state.calls == 1 and state.reserved_eur == 0, f"one call booked, nothing held: {state}"


def test_the_same_failure_among_scored_calls_does_not_stop_a_run(redis_client, distinct_pool):
    # given a gateway that rejects ~30 % of requests with the same 400, one call at a time
    limit = 8
    config = scoring_config(gateway={"concurrency": 1, "max_identical_errors": limit})
    server = start_scorer(ScorerSettings(faults=FaultPlan(bad_request=0.3, seed=5)))
    try:
        # when 60 candidates are scored
        records = score_shard(session_for(config, redis_client, server.base_url), rows(distinct_pool, 400, 60))
    finally:
        server.stop()
    # then every candidate is scored or failed with the server's message, and the run went to the end
    statuses = Counter(r.status for r in records)
    assert set(statuses) == {"scored", "failed"} and len(records) == 60, f"the run finished: {statuses}"
    assert statuses["failed"] > limit, f"more failures than the limit in all ({statuses}), none {limit} in a row"
    assert all(BAD_REQUEST_MESSAGE in r.reason for r in records if r.status == "failed"), "each names the cause"


def test_a_gateway_that_cannot_be_reached_stops_the_job_naming_its_url(redis_url, distinct_pool, tmp_path):
    # given a gateway URL where nothing listens, and a limit of 3
    url = f"http://127.0.0.1:{free_port()}/v1"
    config = scoring_config(gateway={"url": url, "concurrency": 2, "max_retries": 0, "max_identical_errors": 3})
    candidates = [_Candidate(r.id, r.image) for r in rows(distinct_pool, 500, 40)]
    # when the pool is scored
    with pytest.raises(GatewayError) as stopped:
        _run_job(config, redis_url, url, candidates, tmp_path)
    # then the job stops, naming the address and what to check, instead of failing every candidate
    message = str(stopped.value)
    assert f"from the gateway at {url}" in message and "could not be reached" in message, message
    assert "check gateway.url" in message, f"names the fix: {message}"


@pytest.mark.parametrize(
    ("faults", "gateway", "cause"),
    [
        (FaultPlan(server_error=1.0), {}, "InternalServerError (HTTP 500)"),
        (FaultPlan(hang=1.0, hang_s=1.0), {"timeout_s": 0.2}, "no reply within gateway.timeout_s"),
    ],
    ids=["5xx", "timeouts"],
)
def test_a_pool_the_gateway_failed_is_refused_after_scoring_naming_the_cause(
    faults, gateway, cause, redis_url, distinct_pool, tmp_path
):
    # given a gateway that fails every request in a way retrying might fix (so no early stop)
    config = scoring_config(gateway={"concurrency": CONCURRENCY, "max_retries": 0, **gateway})
    candidates = [_Candidate(r.id, r.image) for r in rows(distinct_pool, 700, 24)]
    server = start_scorer(ScorerSettings(latency_s=0.01, faults=faults))
    try:
        # when the pool is scored: every candidate ends failed, none stops the job
        outcome = _run_job(config, redis_url, server.base_url, candidates, tmp_path)
    finally:
        server.stop()
    assert outcome.summary.failed == len(candidates), f"every candidate failed: {outcome.summary}"
    # then the run is refused, naming the share, the setting, the cause and where the rows are
    with pytest.raises(GatewayError) as refused:
        refuse_failed_share(outcome, config.scoring.max_failed_fraction, "runs/x/scores.parquet")
    message = str(refused.value)
    assert "24 of 24 candidates (100.0%) got no score" in message, message
    assert "scoring.max_failed_fraction (5.0%)" in message and cause in message, message
    assert "runs/x/scores.parquet" in message and "test-key" not in message, message


def test_a_share_of_failures_within_the_limit_lets_the_run_go_on(redis_url, distinct_pool, tmp_path):
    # given a gateway failing about a third of requests with HTTP 500, no retries
    config = scoring_config(gateway={"concurrency": CONCURRENCY, "max_retries": 0})
    candidates = [_Candidate(r.id, r.image) for r in rows(distinct_pool, 800, 60)]
    server = start_scorer(ScorerSettings(latency_s=0.01, faults=FaultPlan(server_error=0.3, seed=3)))
    try:
        outcome = _run_job(config, redis_url, server.base_url, candidates, tmp_path)
    finally:
        server.stop()
    failed = outcome.summary.failed
    assert 0 < failed < len(candidates) / 2, f"some candidates failed, most scored: {outcome.summary}"
    # then a limit above that share passes, one below it refuses
    refuse_failed_share(outcome, (failed + 1) / len(candidates), "scores.parquet")
    with pytest.raises(GatewayError, match=f"{failed} of {len(candidates)} candidates"):
        refuse_failed_share(outcome, (failed - 1) / len(candidates), "scores.parquet")
