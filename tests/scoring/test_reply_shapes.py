"""Reply shapes real models produce, through the reference scorer over HTTP and litellm.

A fenced reply is scored; a reply that cannot succeed when asked again (cut at the length
limit, a refusal) is recorded after one paid request; prose after the JSON and near-JSON
are refused, never repaired; a gateway's HTTP 400 is recorded with its own message, without
the key or the image payload.
"""

import logging
from collections import Counter

import pyarrow.dataset as ds
import pytest

from tasks.scoring.budget import to_nano
from tasks.scoring.cache import max_distance_for, phash64
from tasks.scoring.passes import REPLY_ATTEMPTS, score_shard
from tasks.testing.reference_scorer import BAD_REQUEST_MESSAGE, REFUSAL_TEXT, FaultPlan, ScorerSettings
from tests.support import rows, scoring_config, session_for, start_scorer

pytestmark = pytest.mark.integration

SECRET_KEY = "sk-tailcal-test-0123456789abcdef"


def _near_duplicate_triple(pool_dir, max_distance: int) -> list:
    """Three consecutive frames of one scene, distinct bytes, each within `max_distance` bits of the first."""
    scenes = ds.dataset(pool_dir, format="parquet").to_table(columns=["scene_id"]).column("scene_id").to_pylist()
    candidates = rows(pool_dir)
    for start in range(len(candidates) - 2):
        triple = candidates[start : start + 3]
        if len(set(scenes[start : start + 3])) != 1 or len({c.image for c in triple}) != 3:
            continue
        lead = phash64(triple[0].image)
        if all((lead ^ phash64(c.image)).bit_count() <= max_distance for c in triple[1:]):
            return triple
    raise AssertionError("the scoring pool holds no burst of three near-duplicate frames")


def _score(redis_client, plan: FaultPlan, candidates, key: str = "test-key", **settings):
    server = start_scorer(ScorerSettings(faults=plan, **settings))
    try:
        session = session_for(scoring_config(), redis_client, server.base_url, key=key)
        records = score_shard(session, candidates)
    finally:
        server.stop()
    return session, server, records


def test_a_fenced_reply_is_scored_and_three_near_duplicate_frames_cost_one_request(redis_client, pool_dir):
    # given three near-duplicate frames (pHash within 5 bits) and a model that always fences its JSON
    config = scoring_config()
    triple = _near_duplicate_triple(pool_dir, max_distance_for(config.cache.similarity))
    assert max_distance_for(config.cache.similarity) == 5, "the default similarity allows 5 bits"
    # when they are scored
    session, server, records = _score(redis_client, FaultPlan(fenced=1.0), triple, fixed_difficulty=0.62)
    # then each carries the fenced reply's difficulty, and only the first frame was paid for
    assert [r.difficulty for r in records] == [0.62, 0.62, 0.62], f"fenced JSON is scored: {records}"
    assert Counter(r.status for r in records) == {"scored": 1, "cached": 2}, f"one paid, two cached: {records}"
    assert server.stats["requests"] == 1 and server.stats["fenced"] == 1, f"one request in all: {server.stats}"
    state = session.ledger.state()
    assert state.calls == 1 and state.reserved_eur == 0, f"one settled call, nothing reserved: {state}"
    assert to_nano(state.spent_eur) == to_nano(records[0].cost_eur), "the one paid call is on the scored record"


def test_a_reply_cut_at_the_length_limit_is_paid_once_and_names_the_setting(redis_client, distinct_pool):
    # given a model whose every reply is cut at max_tokens (finish_reason "length")
    candidates = rows(distinct_pool, 0, 4)
    # when scored
    session, server, records = _score(redis_client, FaultPlan(length_cut=1.0), candidates)
    # then each is asked once (asking again is cut the same way) and the reason names the limit and the fix
    assert server.stats["requests"] == len(candidates), f"not asked again: {server.stats}"
    assert all(r.status == "failed" and r.difficulty is None for r in records), f"failed: {records}"
    for record in records:
        assert "length limit (128 output tokens)" in record.reason, f"names the limit: {record.reason!r}"
        assert "gateway.models[].max_output_tokens" in record.reason, f"names the setting: {record.reason!r}"
    # and the paid, cut replies are booked on the records and in the ledger
    state = session.ledger.state()
    assert all(r.cost_eur > 0 for r in records), f"a cut reply is billed: {[r.cost_eur for r in records]}"
    assert state.calls == 4 and to_nano(state.spent_eur) == sum(to_nano(r.cost_eur) for r in records), (
        f"ledger {state} equals the records' costs"
    )


def test_a_refusal_is_not_asked_again_and_its_text_is_quoted(redis_client, distinct_pool):
    # given a model that refuses (OpenAI's `message.refusal`, no content)
    candidates = rows(distinct_pool, 10, 3)
    # when scored
    _, server, records = _score(redis_client, FaultPlan(refusal=1.0), candidates)
    # then the refusal is recorded with its text, after one request per candidate
    assert server.stats["requests"] == len(candidates), f"a refusal is not asked again: {server.stats}"
    assert all(r.status == "failed" for r in records), f"failed: {records}"
    assert all(f"model refused: {REFUSAL_TEXT!r}" in r.reason for r in records), [r.reason for r in records]


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ("trailing_prose", "followed by other text"),
        ("near_json", "not JSON (Expecting property name enclosed in double quotes"),
    ],
)
def test_json_with_prose_after_it_and_near_json_are_refused_not_guessed(shape, reason, redis_client, distinct_pool):
    # given a model answering JSON followed by a sentence, or single quotes and a trailing comma
    candidates = rows(distinct_pool, 20, 3)
    # when scored
    _, server, records = _score(redis_client, FaultPlan(**{shape: 1.0}), candidates)
    # then no score is read out of it: asked once more (it may answer cleanly), then failed with the cause
    assert all(r.status == "failed" and r.difficulty is None for r in records), f"{shape}: {records}"
    assert all(reason in r.reason for r in records), f"{shape}: {[r.reason for r in records]}"
    assert server.stats["requests"] == REPLY_ATTEMPTS * len(candidates), f"{shape}: asked twice: {server.stats}"


def test_a_bad_request_carries_the_server_message_without_key_or_payload(redis_client, distinct_pool, caplog, capfd):
    # given a gateway that rejects response_format with HTTP 400 and echoes the key and the image in its message
    caplog.set_level(logging.DEBUG, logger="tasks")
    plan = FaultPlan(bad_request=1.0, echo_request_in_errors=True)
    candidates = rows(distinct_pool, 30, 3)
    # when scored
    session, server, records = _score(redis_client, plan, candidates, key=SECRET_KEY)
    # then the 400 is not retried, and each reason carries the server's message
    assert server.stats["requests"] == len(candidates), f"a 400 is sent once: {server.stats}"
    for record in records:
        assert record.status == "failed", record
        assert record.reason.startswith(f"BadRequestError (HTTP 400): {BAD_REQUEST_MESSAGE}"), record.reason
        # and never the key or the image payload the server echoed
        assert SECRET_KEY not in record.reason and "base64," not in record.reason, f"redacted: {record.reason!r}"
    printed = capfd.readouterr()
    for text, where in ((caplog.text, "logs"), (printed.out + printed.err, "output")):
        assert SECRET_KEY not in text, f"the key reached the {where}"
        assert "base64,/9j" not in text, f"the image payload reached the {where}"
    state = session.ledger.state()
    assert state.spent_eur == 0 and state.reserved_eur == 0, f"a rejected request costs nothing: {state}"


def test_a_gateway_that_reports_no_usage_is_booked_at_the_worst_case_and_the_cap_still_binds(
    redis_client, pool_dir, caplog
):
    # given a gateway that answers without a usage block, and a cap for about three worst-case calls
    server = start_scorer(ScorerSettings(report_usage=False))
    try:
        config = scoring_config(budget={"cap_eur": 0.0005})
        session = session_for(config, redis_client, server.base_url)
        with caplog.at_level(logging.WARNING, logger="tasks.scoring.gateway"):
            records = score_shard(session, rows(pool_dir, 0, 8))
    finally:
        server.stop()
    # then every paid call is booked at its reservation, and the cap stops the rest
    paid = [r for r in records if r.status == "scored"]
    assert paid and all(r.cost_eur > 0 for r in paid), f"no call is free: {[r.cost_eur for r in paid]}"
    assert any(r.status == "unscored" for r in records), f"the cap binds: {Counter(r.status for r in records)}"
    assert session.ledger.state().spent_eur <= 0.0005 + 1e-12, "spend stays within the cap"
    warnings = [r.message for r in caplog.records if "reports no usable token usage" in r.getMessage()]
    assert len(warnings) == 1, f"one warning says why calls are booked at the worst case: {warnings}"
