"""`tailcal score` end to end on the embedded default: the dry run forecasts and pays nothing;
the real run writes scores.parquet and an MLflow run; a rerun pays nothing; a user error
inside the flow is one line and exit code 2."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from flows.cli import main
from tests.support import write_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("score-flow")
    return write_config(
        work / "score.yaml",
        data={"data_dir": str(work / "data"), "synthetic": {"seed": 9, "pool_size": 48, "eval_size": 4}},
        scoring={"passes": 2, "shard_size": 16},
        tracking={"experiment": "score-e2e"},
    )


@pytest.fixture(autouse=True)
def embedded_services(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _summary_value(out: str, label: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(label))


def test_dry_run_prints_the_forecast_and_pays_nothing(config_path, capsys):
    # when
    code = main(["score", "--config", str(config_path), "--dry-run"])
    # then
    out = capsys.readouterr().out
    data = config_path.parent / "data"
    assert code == 0, out
    assert "cost forecast: 48 candidates × 2 passes" in out, f"the forecast names the pool and passes:\n{out}"
    assert "nothing was sent to the gateway" in out, out
    assert not (data / "score-logs").exists(), "a dry run scores no shard"
    assert not (data / "runs").exists(), "a dry run leaves no run behind"


def test_scoring_run_writes_scores_and_an_mlflow_run_and_a_rerun_pays_nothing(config_path, capsys):
    # when scored twice
    first = main(["score", "--config", str(config_path), "--release-id", "score-1"])
    first_out = capsys.readouterr().out
    second = main(["score", "--config", str(config_path), "--release-id", "score-2"])
    second_out = capsys.readouterr().out
    # then
    assert first == 0 and second == 0, first_out + second_out
    paid = int(_summary_value(first_out, "scoring").split()[1])
    assert paid > 0, f"the first run pays for misses: {first_out}"
    assert _summary_value(second_out, "scoring").split()[1] == "0", f"a rerun pays nothing:\n{second_out}"
    scores_path = Path(_summary_value(first_out, "scores").split()[-1])
    table = pq.read_table(scores_path)
    assert table.num_rows == 48 and table.column("difficulty").null_count == 0, "every candidate scored"
    run_id = _summary_value(first_out, "MLflow run").split()[-1]
    client = MlflowClient(f"sqlite:///{(config_path.parent / 'data' / 'mlflow.db').resolve()}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "scoring", run.data.tags
    assert run.data.metrics["scoring.calls"] == paid, "MLflow holds the paid calls the summary printed"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "scores.parquet" in artifacts, f"scores.parquet logged: {artifacts}"


def test_an_error_inside_the_flow_is_one_line_and_exit_2(config_path, capsys):
    # when the prompt template does not exist (found only once the flow runs)
    code = main(["score", "--config", str(config_path), "--prompt", "nope-v9", "--dry-run"])
    # then
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tailcal:")]
    assert code == 2, "a TailcalError exits 2"
    assert len(err_lines) == 1 and "nope-v9" in err_lines[0] and "scoring.prompt" in err_lines[0], err_lines


def test_a_k_the_pool_cannot_fill_is_refused_before_anything_is_paid(tmp_path, capsys):
    # given a 30-candidate pool
    config = write_config(
        tmp_path / "small.yaml",
        data={"data_dir": str(tmp_path / "data"), "synthetic": {"seed": 2, "pool_size": 30, "eval_size": 4}},
    )
    # when the release cycle is asked for 31 calibration images
    code = main(["run", "--config", str(config), "--k", "31"])
    # then it stops with the fix, before scoring
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tailcal:")]
    assert code == 2 and len(err) == 1, f"exit 2, one line: {err}"
    assert "selection.k=31" in err[0] and "30 candidate(s)" in err[0], f"names K and the pool size: {err[0]}"
    assert not (tmp_path / "data" / "score-logs").exists(), "no shard was scored (nothing paid)"


def test_a_missing_checkpoint_is_refused_before_the_pool_is_scored(tmp_path, capsys):
    config = write_config(
        tmp_path / "nockpt.yaml",
        data={"data_dir": str(tmp_path / "data"), "synthetic": {"seed": 2, "pool_size": 30, "eval_size": 4}},
        detector={"checkpoint": str(tmp_path / "missing.pt")},
    )
    code = main(["run", "--config", str(config), "--k", "8"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tailcal:")]
    assert code == 2 and len(err) == 1 and "missing.pt does not exist" in err[0], err
    assert not (tmp_path / "data" / "score-logs").exists(), "no shard was scored (nothing paid)"


def test_a_gateway_failing_every_call_with_5xx_ends_the_run_with_exit_2_and_the_cause(tmp_path, capsys, monkeypatch):
    # given a gateway (the reference scorer) answering HTTP 500 to every request
    from tasks.testing.reference_scorer import FaultPlan, ScorerSettings
    from tests.support import start_scorer

    server = start_scorer(ScorerSettings(latency_s=0.01, faults=FaultPlan(server_error=1.0)))
    monkeypatch.setenv("TAILCAL_GATEWAY_KEY", "flow-test-key")
    config = write_config(
        tmp_path / "failing.yaml",
        data={"data_dir": str(tmp_path / "data"), "synthetic": {"seed": 2, "pool_size": 24, "eval_size": 4}},
        gateway={"url": server.base_url, "max_retries": 0},
        scoring={"passes": 1, "shard_size": 16},
    )
    try:
        # when the pool is scored
        code = main(["score", "--config", str(config)])
    finally:
        server.stop()
    # then the run ends with exit 2 and one line naming the share, the cause and the setting
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tailcal:")]
    assert code == 2 and len(err) == 1, f"exit 2, one line: {code} {err}"
    assert "24 of 24 candidates" in err[0] and "HTTP 500" in err[0], f"names the share and cause: {err[0]}"
    assert "scoring.max_failed_fraction" in err[0] and "flow-test-key" not in err[0], err[0]
    scores = next((tmp_path / "data" / "runs").glob("*/scores.parquet"))
    assert pq.read_table(scores).num_rows == 24, "every candidate's failure is kept in scores.parquet"


def test_a_shard_that_failed_with_a_user_error_is_not_retried():
    # given a task with the shard's retry rule
    from prefect import flow, task

    from flows.scoring import _transient
    from tasks.errors import GatewayError

    calls: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=_transient)
    def shard(kind: str) -> None:
        calls.append(kind)
        raise GatewayError("the gateway refused: fix it") if kind == "refused" else ConnectionError("blip")

    @flow
    def run(kind: str) -> None:
        shard(kind)

    # when a shard fails with a TailcalError, and when it fails with anything else
    with pytest.raises(GatewayError):
        run("refused")
    with pytest.raises(ConnectionError):
        run("transient")
    # then only the transient failure is tried again (twice)
    assert calls.count("refused") == 1, f"a user error is final: {calls}"
    assert calls.count("transient") == 3, f"a transient failure gets its retries: {calls}"


def test_a_dry_run_refuses_a_remote_scheduler_the_real_run_would_refuse(config_path, capsys, monkeypatch):
    # given a remote Dask scheduler while Redis and the gateway are embedded in this process
    monkeypatch.setenv("TAILCAL_DASK_ADDRESS", "tcp://scheduler.example:8786")
    dask_config = config_path.parent / "dask.yaml"
    dask_config.write_text(config_path.read_text().replace("scoring:\n", "scoring:\n  runner: dask\n", 1))
    # when only the forecast is asked for
    code = main(["score", "--config", str(dask_config), "--dry-run"])
    # then it stops as the run would, before a forecast that promises a run that cannot happen
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tailcal:")]
    assert code == 2 and len(err_lines) == 1, err_lines
    assert "TAILCAL_DASK_ADDRESS=tcp://scheduler.example:8786" in err_lines[0], err_lines
    assert "Redis and gateway here are embedded" in err_lines[0], err_lines
