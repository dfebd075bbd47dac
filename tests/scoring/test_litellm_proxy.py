"""A real gateway in the path: `tailcal score` through the LiteLLM proxy in front of the reference scorer.

The proxy runs from its own pinned environment (.venv-gateway, built once by the same
`ensure_gateway_env` that `make gateway-env` runs, and kept between sessions), with a
master key and a virtual key the proxy limits to LIMITED_RPM calls a minute. tailcal
reaches it as it reaches any gateway: `gateway.url` and the key in TAILCAL_GATEWAY_KEY.

- Every paid call went through the proxy (its own access log counts them, and the scorer
  behind it saw the same number), and the ledger booked exactly the scorer's token count ×
  the configured price.
- A wrong key (401), the proxy's own rpm limit (429) and a request the model rejects (400)
  each end `tailcal score` with exit code 2 and one line: the gateway's URL, its own
  message and what to do, never the key.
- `make gateway` serves the proxy with the master key from LITELLM_MASTER_KEY until Ctrl-C,
  which stops everything it started.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from flows.cli import main
from tasks.config import RuntimeEnv
from tasks.loopback import free_port
from tasks.scoring import passes
from tasks.scoring.budget import BudgetLedger, to_nano
from tasks.services import redis_service
from tasks.testing import proxy_auth
from tasks.testing.litellm_proxy import LiteLLMProxy, VirtualKey
from tasks.testing.reference_scorer import BAD_REQUEST_MESSAGE, FaultPlan, ReferenceScorer, ScorerSettings
from tests.support import ctrl_c, gateway_env_or_skip, make_target, subprocess_env, wait_until, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MASTER_KEY = "sk-tailcal-test-master-3b9d71c0e5"
LIMITED_KEY = "sk-tailcal-test-limited-8f24a6d1b7"
WRONG_KEY = "sk-tailcal-test-wrong-0c5e9a3f12"
LIMITED_RPM = 2
STOP_AFTER = 3  # gateway.max_identical_errors in the error cases
PRICE = {"input_eur_per_mtok": 0.14, "output_eur_per_mtok": 0.55}
STRICT_MODEL = "reference-vlm-strict"  # served by a scorer that rejects every request with HTTP 400


@pytest.fixture(scope="module")
def proxy_environment() -> None:
    gateway_env_or_skip()


@pytest.fixture(scope="module")
def gateway(proxy_environment, tmp_path_factory):
    """(proxy, scorer, strict scorer): one proxy routing reference-vlm to the scorer and
    STRICT_MODEL to a scorer that answers every request with HTTP 400."""
    with (
        ReferenceScorer() as scorer,
        ReferenceScorer(ScorerSettings(faults=FaultPlan(bad_request=1.0))) as strict,
        LiteLLMProxy(
            {"reference-vlm": scorer.base_url, STRICT_MODEL: strict.base_url},
            MASTER_KEY,
            tmp_path_factory.mktemp("litellm-proxy"),
            virtual_keys=[VirtualKey(LIMITED_KEY, "limited", rpm=LIMITED_RPM)],
        ) as proxy,
    ):
        print(f"LiteLLM proxy answered {proxy.start_s:.1f} s after it was started")
        yield proxy, scorer, strict


@pytest.fixture(autouse=True)
def embedded_services(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    passes._background_loop().error_streaks.clear()  # a stop holds per gateway: no test inherits one


def _config(tmp_path: Path, url: str, seed: int, gateway: dict | None = None) -> Path:
    return write_config(
        tmp_path / "proxy.yaml",
        data={"data_dir": str(tmp_path / "data"), "synthetic": {"seed": seed, "pool_size": 32, "eval_size": 4}},
        gateway={"url": url, "models": [{"name": "reference-vlm", **PRICE}], **(gateway or {})},
        scoring={"passes": 2, "shard_size": 16},
        tracking={"experiment": "litellm-proxy"},
    )


def test_tailcal_score_through_the_proxy_pays_exactly_the_calls_the_gateway_served(
    gateway, tmp_path, monkeypatch, capsys
):
    # given tailcal pointed at the proxy with its master key
    proxy, scorer, _ = gateway
    monkeypatch.setenv("TAILCAL_GATEWAY_KEY", MASTER_KEY)
    config = _config(tmp_path, proxy.base_url, seed=31)
    served_before, upstream_before = proxy.completions()[200], scorer.stats["requests"]
    tokens_before = scorer.stats["prompt_tokens"], scorer.stats["completion_tokens"]
    # when the pool is scored
    code = main(["score", "--config", str(config), "--release-id", "through-proxy"])
    printed = capsys.readouterr()
    # then every paid call went through the proxy, and reached the scorer once
    assert code == 0, printed.out + printed.err
    summary = next(line for line in printed.out.splitlines() if line.strip().startswith("scoring"))
    paid = int(summary.split()[1])
    served = proxy.completions()[200] - served_before
    upstream = scorer.stats["requests"] - upstream_before
    assert paid > 0, f"the run paid for its cache misses: {summary}"
    assert served == paid, f"the proxy's log counts {served} completions, tailcal paid {paid}"
    assert upstream == paid, f"the scorer behind the proxy answered {upstream} requests, tailcal paid {paid}"
    # and the ledger booked the gateway-side token count × the configured price, call by call
    prompt = scorer.stats["prompt_tokens"] - tokens_before[0]
    completion = scorer.stats["completion_tokens"] - tokens_before[1]
    billed = (prompt * PRICE["input_eur_per_mtok"] + completion * PRICE["output_eur_per_mtok"]) / 1e6
    with redis_service(RuntimeEnv(), tmp_path / "data") as redis:
        state = BudgetLedger(redis.client, MASTER_KEY, cap_eur=1.0, alert_fraction=0.8).state()
    assert state.calls == paid, f"the ledger settled {state.calls} calls, {paid} were paid"
    # each call is booked to the nano-euro, so the totals may differ by half a nano-euro per call
    assert abs(to_nano(state.spent_eur) - to_nano(billed)) <= paid, (
        f"ledger €{state.spent_eur:.9f} vs {prompt} prompt + {completion} completion tokens × price = €{billed:.9f}"
    )
    assert state.reserved_eur == 0, f"nothing is left reserved: €{state.reserved_eur}"
    log = proxy.log_path.read_text()
    assert MASTER_KEY not in log and MASTER_KEY not in printed.out + printed.err, "the key is in no log or output"


ERROR_CASES = {
    # (key, model, gateway settings, what the one line must say)
    "wrong key, 401": (
        WRONG_KEY,
        "reference-vlm",
        {},
        ["AuthenticationError (HTTP 401)", proxy_auth.REFUSED, "check the key in the TAILCAL_GATEWAY_KEY"],
    ),
    "the proxy's rpm limit, 429": (
        LIMITED_KEY,
        "reference-vlm",
        {"max_retries": 0, "concurrency": 2},
        ["RateLimitError (HTTP 429)", "Rate limit exceeded for api_key: limited", "set gateway.rpm below"],
    ),
    "a request the model rejects, 400": (
        MASTER_KEY,
        STRICT_MODEL,
        {},
        [f"BadRequestError (HTTP 400): {BAD_REQUEST_MESSAGE}", "rejected the request as sent"],
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_a_gateway_side_error_ends_tailcal_score_with_one_line_naming_the_gateway_and_the_fix(
    case, gateway, tmp_path, monkeypatch, capsys
):
    # given tailcal pointed at the proxy, with a key or model the gateway refuses
    key, model, settings, expected = ERROR_CASES[case]
    proxy, scorer, strict = gateway
    monkeypatch.setenv("TAILCAL_GATEWAY_KEY", key)
    models = [{"name": model, **PRICE}]
    config = _config(tmp_path, proxy.base_url, 41, {"max_identical_errors": STOP_AFTER, "models": models, **settings})
    upstream_before = scorer.stats["ok"] + strict.stats["ok"]
    # when the pool is scored
    code = main(["score", "--config", str(config)])
    # then it stops with exit code 2 and one line: the gateway, its message, the fix
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tailcal:")]
    assert code == 2 and len(lines) == 1, f"{case}: exit {code}, lines {lines}\n{err[-3000:]}"
    line = lines[0]
    print(f"{case}: {line}")
    assert f"from the gateway at {proxy.base_url}" in line, f"{case}: names the gateway: {line}"
    for text in expected:
        assert text in line, f"{case}: {text!r} missing from {line}"
    assert f"max_identical_errors (now {STOP_AFTER})" in line, f"{case}: names the setting: {line}"
    assert "litellm." not in line and "OpenAIException" not in line, f"{case}: no client wrapping: {line}"
    assert key not in err, f"{case}: the key is not printed"
    answered = scorer.stats["ok"] + strict.stats["ok"] - upstream_before
    assert answered <= LIMITED_RPM, f"{case}: only calls the gateway let through were answered: {answered}"


def test_make_gateway_serves_the_proxy_with_its_master_key_until_ctrl_c(proxy_environment, tmp_path):
    # given `make gateway` on a free port with a master key in its environment
    port = free_port()
    variables = {"GATEWAY_PORT": str(port), "GATEWAY_DIR": str(tmp_path / "gateway")}
    env = subprocess_env(LITELLM_MASTER_KEY=MASTER_KEY)
    log = tmp_path / "make-gateway.log"
    models = f"http://127.0.0.1:{port}/v1/models"

    def listed(key: str) -> int | None:
        try:
            return httpx.get(models, headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code
        except httpx.HTTPError:
            return None

    with make_target("gateway", variables, log, env) as make:
        # when it answers
        up = wait_until(lambda: make.poll() is not None or listed(MASTER_KEY) == 200, 240, step_s=0.5)
        assert up and make.poll() is None, f"the proxy answers with the master key:\n{log.read_text()[-3000:]}"
        # then it takes the master key and refuses any other
        assert listed(WRONG_KEY) == 401, "another key is refused"
        # when Ctrl-C reaches make's process group
        started = ctrl_c(make)
    # then the proxy and the scorer are gone
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"left running after Ctrl-C: {[p.cmdline()[:4] for p in alive]}"
    assert listed(MASTER_KEY) is None, "nothing answers on the proxy's port"
    assert MASTER_KEY not in log.read_text(), "the key is not printed"
