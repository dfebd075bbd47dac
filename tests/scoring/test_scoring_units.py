"""Pure scoring logic: strict reply parsing, near-duplicate grouping, pass combination, score logs."""

from dataclasses import dataclass

import httpx
import openai
import pytest

from tasks.config import GatewayConfig
from tasks.scoring.gateway import ReplyError, parse_reply, reply_problem, server_message
from tasks.scoring.passes import ScoreRecord, _final, _fix_for, _leaders_first
from tasks.scoring.ratelimit import LATE_WAKE_S, slot_interval_s
from tasks.scoring.results import CostForecast, scores_table, summarize
from tasks.scoring.shards import read_shard_log, shard_fingerprint, write_shard_log

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"difficulty": 0.25, "factors": ["low_light"]}', (0.25, ("low_light",))),
        ('{"difficulty": 1, "factors": []}', (1.0, ())),
        ('{"difficulty": 0}', (0.0, ())),
    ],
)
def test_valid_replies_parse(content, expected):
    assert parse_reply(content) == expected, f"{content} should parse"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("The frame is hard, about 0.7.", "not JSON"),
        ('{"difficulty": 0.4, "factors": [', "not JSON"),
        ('{"difficulty": NaN}', "out of range"),
        ('{"difficulty": -0.1}', "out of range"),
        ('{"difficulty": 1.2}', "out of range"),
        ('{"difficulty": "0.5"}', "not a number"),
        ('{"difficulty": true}', "not a number"),
        ('{"difficulty": 0.5, "factors": "blur"}', "not a list"),
        ("[0.5]", "not an object"),
        ("", "empty"),
    ],
)
def test_invalid_replies_are_rejected_with_the_reason(content, reason):
    with pytest.raises(ReplyError, match=reason):
        parse_reply(content)


@pytest.mark.parametrize(
    "content",
    [
        '```json\n{"difficulty": 0.62, "factors": ["low_light"]}\n```',
        '```\n{"difficulty": 0.62, "factors": ["low_light"]}\n```',
        '  ```JSON\n{"difficulty": 0.62, "factors": ["low_light"]}\n```\n',
        '```json {"difficulty": 0.62, "factors": ["low_light"]} ```',
        '\n\t {"difficulty": 0.62, "factors": ["low_light"]}  \n',
    ],
)
def test_one_fence_or_whitespace_around_the_object_is_accepted_unchanged(content):
    assert parse_reply(content) == (0.62, ("low_light",)), f"{content!r} carries exactly 0.62"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"difficulty": 0.62, "factors": []}\nThe frame is dark.', "followed by other text at char 36"),
        ('{"difficulty": 0.62}{"difficulty": 0.1}', "followed by other text"),
        ('Here you go:\n```json\n{"difficulty": 0.62}\n```', "not JSON"),
        ('```json\n{"difficulty": 0.62}\n```\nHope this helps.', "not JSON"),
        ('```json\n{"difficulty": 0.62}\n```\n```json\n{"difficulty": 0.1}\n```', "not JSON"),
        ('```python\n{"difficulty": 0.62}\n```', "not JSON"),
        ('```json\n{"difficulty": 0.62,}\n```', "not JSON"),
        ("{'difficulty': 0.62, 'factors': []}", "not JSON"),
        ('{"difficulty": 0.62, "factors": [],}', "not JSON"),
        ('{"difficulty": 0.62, "factors": ["blur",]}', "not JSON"),
        ('{"difficulty": 0.1, "factors": [], "difficulty": 0.62}', "repeated key 'difficulty'"),
        ("```json\n```", "not JSON"),
        ("  \n ", "empty"),
    ],
)
def test_prose_around_json_and_near_json_are_refused_not_guessed(content, reason):
    with pytest.raises(ReplyError, match=reason) as refused:
        parse_reply(content)
    assert refused.value.retryable, f"{content!r}: the model may answer cleanly when asked again"


def test_a_cut_reply_and_a_refusal_are_not_retryable_and_name_their_cause():
    cut = reply_problem(ReplyError("not JSON"), "length", None, 128)
    assert not cut.retryable, "the same request is cut at the same limit"
    assert "length limit (128 output tokens)" in str(cut) and "gateway.models[].max_output_tokens" in str(cut), (
        f"names the limit and the setting: {cut}"
    )
    refusal = "I'm sorry,\n but I can't   help with this image. " + "Policy. " * 40
    refused = reply_problem(ReplyError("empty reply"), "stop", refusal, 128)
    assert not refused.retryable, "a refusal is the model's answer to this image and prompt"
    assert str(refused).startswith("model refused: \"I'm sorry, but I can't help with this image. Policy."), (
        f"quotes the refusal on one line: {refused}"
    )
    assert len(str(refused)) < 200 and str(refused).endswith('…"'), f"trimmed: {refused}"
    filtered = reply_problem(ReplyError("empty reply"), "content_filter", None, 128)
    assert not filtered.retryable and "content filter" in str(filtered), f"names the filter: {filtered}"
    other = ReplyError("not JSON (Expecting value at char 0): 'hm'")
    assert reply_problem(other, "stop", None, 128) is other, "any other invalid reply keeps its own reason"


class _Rejected(Exception):
    def __init__(self, body, message=""):
        super().__init__(message)
        self.body, self.message = body, message


def test_the_server_message_comes_from_the_error_body_or_the_first_line():
    message = "Invalid parameter: 'response_format' must be one of 'json_object', 'text'."
    body = {"message": message, "type": "invalid_request_error", "param": "response_format", "code": None}
    assert server_message(_Rejected(body)) == message, "the OpenAI-style error.message, as sent"
    assert server_message(_Rejected({"error": {"message": "value out of range", "param": "temperature"}})) == (
        "value out of range (param temperature)"
    ), "a param the message does not name is added"
    raw = "litellm.BadRequestError: OpenAIException - <html>400 Bad Request</html>\n\nLiteLLM: model group failed"
    assert server_message(_Rejected(None, raw)) == "<html>400 Bad Request</html>", "litellm's wrapping is removed"
    assert server_message(_Rejected(None, "")) is None, "no message: none is invented"


def test_a_litellm_proxys_wrapping_is_removed_from_its_message():
    # given errors as litellm's client raises them for a LiteLLM proxy's answers (wrapped twice)
    auth = "litellm.AuthenticationError: AuthenticationError: OpenAIException - Authentication Error: bad key\n\nx"
    nested = "litellm.BadRequestError: OpenAIException - Invalid parameter: 'seed'.\n\nLiteLLM: model group 'm' failed"
    body = {"message": nested, "type": "invalid_request_error", "param": "None", "code": "400"}
    # then the message is the gateway's own, on one line, without "(param None)"
    assert server_message(_Rejected(None, auth)) == "Authentication Error: bad key", "the proxy's 401 message"
    assert server_message(_Rejected(body)) == "Invalid parameter: 'seed'.", "the upstream's 400 through the proxy"


def _status_error(kind: type[openai.APIStatusError], status: int, message: str = "refused") -> openai.APIStatusError:
    request = httpx.Request("POST", "http://gateway.test/v1/chat/completions")
    return kind(message, response=httpx.Response(status, request=request), body={"message": message})


def _raised_from(exc: Exception, cause: Exception) -> Exception:
    exc.__cause__ = cause
    return exc


def test_a_row_of_failures_stops_the_run_only_when_retrying_cannot_mend_them():
    request = httpx.Request("POST", "http://gateway.test/v1/chat/completions")
    final = {
        "400": _status_error(openai.BadRequestError, 400),
        "401": _status_error(openai.AuthenticationError, 401),
        "429 after every retry": _status_error(openai.RateLimitError, 429),
        "unreachable": openai.APIConnectionError(request=request),
        # litellm reports a refused connection as an HTTP 500 that no server sent
        "unreachable, as litellm reports it": _raised_from(
            _status_error(openai.InternalServerError, 500, "Connection error."),
            openai.APIConnectionError(request=request),
        ),
    }
    passing = {
        "408": _status_error(openai.APIStatusError, 408),
        "500": _status_error(openai.InternalServerError, 500),
        "timeout": openai.APITimeoutError(request=request),
        "a timeout litellm reports as a 500": _raised_from(
            _status_error(openai.InternalServerError, 500), httpx.ReadTimeout("slow", request=request)
        ),
    }
    assert all(_final(exc) for exc in final.values()), {k: _final(e) for k, e in final.items()}
    assert not any(_final(exc) for exc in passing.values()), {k: _final(e) for k, e in passing.items()}


def test_each_stopping_failure_names_its_fix():
    # given the gateway settings a run had
    gateway = GatewayConfig(models=[{"name": "m", "input_eur_per_mtok": 1, "output_eur_per_mtok": 1}], max_retries=2)
    request = httpx.Request("POST", "http://gateway.test/v1/chat/completions")
    # then each failure's fix names the setting or variable to change
    fixes = {
        "401": (_status_error(openai.AuthenticationError, 401), "TAILCAL_GATEWAY_KEY environment variable"),
        "LiteLLM without a database": (
            _status_error(openai.BadRequestError, 400, "No connected db."),
            "TAILCAL_GATEWAY_KEY environment variable",
        ),
        "429": (_status_error(openai.RateLimitError, 429), "gateway.max_retries=2 retries: set gateway.rpm below"),
        "unreachable": (openai.APIConnectionError(request=request), "check gateway.url"),
        "other 400": (_status_error(openai.BadRequestError, 400), "rejected the request as sent"),
    }
    for case, (exc, fix) in fixes.items():
        assert fix in _fix_for(exc, gateway), f"{case}: {_fix_for(exc, gateway)}"


def test_near_duplicates_follow_their_leader():
    base = 0xF0F0F0F0F0F0F0F0
    hashes = [base, base ^ 0b111, 0x0F0F0F0F0F0F0F0F, base ^ 0b111111, 0x0F0F0F0F0F0F0F0F ^ 1]
    leaders, followers = _leaders_first(hashes, max_distance=5)
    assert leaders == [0, 2, 3], "a frame 6 bits away from every leader leads its own group"
    assert followers == [1, 4], "frames within 5 bits of a leader wait for its score"


def _record(cid, p, status, difficulty, cost=0.0, reason=""):
    return ScoreRecord(cid, p, status, difficulty, cost_eur=cost, model="m", reason=reason)


def test_scores_table_means_passes_and_keeps_reasons():
    records = [
        _record("a", 0, "scored", 0.2, cost=1e-4),
        _record("a", 1, "cached", 0.4),
        _record("b", 0, "failed", None, reason="InternalServerError (HTTP 500)"),
        _record("b", 1, "scored", 0.9, cost=1e-4),
        _record("c", 0, "unscored", None, reason="budget exhausted"),
        _record("c", 1, "unscored", None, reason="budget exhausted"),
    ]
    table = scores_table(records, passes=2).to_pylist()
    assert table[0]["difficulty"] == pytest.approx(0.3), "mean of both passes"
    assert table[1]["difficulty"] == 0.9, "a failed pass is left out of the mean"
    assert table[2]["difficulty"] is None and table[2]["reason"] == "budget exhausted", "unscored is explicit"
    assert table[0]["cached_passes"] == 1 and table[0]["cost_eur"] == pytest.approx(1e-4), "cache and cost per row"


def test_scores_table_keeps_the_factor_tags_half_the_scoring_passes_named():
    def tagged(cid, p, factors, difficulty=0.5):
        return ScoreRecord(cid, p, "scored", difficulty, tuple(factors), model="m")

    records = [
        tagged("two", 0, ["low_light", "sensor_noise"]),
        tagged("two", 1, ["low_light"]),
        tagged("three", 0, ["glare", "blur"]),
        tagged("three", 1, ["blur"]),
        tagged("three", 2, ["blur", "low_light"]),
        tagged("one", 0, ["blur"]),
        _record("one", 1, "failed", None, reason="InternalServerError (HTTP 500)"),
        _record("none", 0, "failed", None, reason="InternalServerError (HTTP 500)"),
    ]
    factors = {row["id"]: row["factors"] for row in scores_table(records, passes=3).to_pylist()}
    assert factors["two"] == ["low_light", "sensor_noise"], f"1 of 2 passes is half: {factors['two']}"
    assert factors["three"] == ["blur"], f"a tag 1 of 3 passes named is left out: {factors['three']}"
    assert factors["one"] == ["blur"], f"a failed pass does not vote: {factors['one']}"
    assert factors["none"] is None, "no scored pass: tags unknown (null), not an empty list"


def test_summary_reports_spearman_between_passes_and_spend():
    order = [0.1, 0.5, 0.3, 0.9, 0.7]
    records = [_record(f"i{n}", 0, "scored", v, cost=1e-4) for n, v in enumerate(order)]
    records += [_record(f"i{n}", 1, "cached", v + 0.01) for n, v in enumerate(order)]
    summary = summarize(records, passes=2)
    assert summary.spearman == pytest.approx(1.0), "same ranking in both passes"
    assert summary.cache_hit_rate == 0.5 and summary.calls == 5, "half the look-ups hit"
    assert summary.spend_eur_per_pass == pytest.approx((5e-4, 0.0)), "spend per pass"


def test_forecast_is_candidates_times_passes_times_misses_times_price():
    forecast = CostForecast(candidates=2000, passes=2, expected_hit_rate=0.4, eur_per_call=0.0001)
    assert forecast.calls == 2400 and forecast.eur == pytest.approx(0.24), "2000·2·0.6 calls at €0.0001"
    assert "2000 candidates × 2 passes" in forecast.describe(), forecast.describe()


@pytest.mark.parametrize("rpm", [1, 2, 60, 1200, 3000, 100_000])
def test_late_wakers_never_put_more_than_rpm_sends_in_a_minute(rpm):
    # exact 60/rpm spacing (the old limiter) fails this: one more send fits a window
    # given slots at the limiter's spacing, each send as late as a waiter may wake, placed
    # adversarially (early slots as late as possible, the window right after them)
    interval = slot_interval_s(rpm)
    # then the most sends any 60 s window can hold is within the limit
    most = int((60 + LATE_WAKE_S) / interval + 1e-9) + 1
    assert most <= rpm, f"rpm {rpm}: a 60 s window can hold {most} sends"
    assert interval <= 60 / rpm * 1.05 or rpm < 30, f"rpm {rpm}: spacing {interval:.4f} s gives away > 5 % of the rate"


@dataclass(frozen=True)
class _Shot:
    id: str
    image: bytes


def test_a_score_log_is_reused_only_for_the_same_ids_and_image_bytes(tmp_path):
    # given a complete log written for two candidates
    shard = [_Shot("a", b"frame-a"), _Shot("b", b"frame-b")]
    records = [ScoreRecord("a", 0, "scored", 0.4), ScoreRecord("b", 0, "cached", 0.6)]
    path = tmp_path / "shard-00000.parquet"
    write_shard_log(path, records, shard_fingerprint(shard))
    # then the same shard reads it back, order of candidates notwithstanding
    assert read_shard_log(path, shard_fingerprint(list(reversed(shard)))) == records, "same shard reuses its log"
    # and a pool rewritten under the same ids does not
    rewritten = [_Shot("a", b"another frame"), _Shot("b", b"frame-b")]
    assert read_shard_log(path, shard_fingerprint(rewritten)) is None, "new bytes under an old id are scored again"
    assert read_shard_log(path, shard_fingerprint(shard[:1])) is None, "other ids are scored again"


def test_a_score_log_with_failed_or_unscored_candidates_is_scored_again(tmp_path):
    shard = [_Shot("a", b"frame-a"), _Shot("b", b"frame-b")]
    for status in ("failed", "unscored"):
        records = [ScoreRecord("a", 0, "scored", 0.4), ScoreRecord("b", 0, status, None, reason="x")]
        path = tmp_path / f"{status}.parquet"
        write_shard_log(path, records, shard_fingerprint(shard))
        assert read_shard_log(path, shard_fingerprint(shard)) is None, f"a {status} candidate gets another try"
