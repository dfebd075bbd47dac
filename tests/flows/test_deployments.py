"""Deployments as users run them: a local Prefect server and process worker, `prefect deploy
--all` from prefect.yaml, then `prefect deployment run` of the ablation with overrides."""

import json

import psutil
import pytest
from mlflow import MlflowClient

from flows.deploy_local import LocalPrefect
from tasks.loopback import free_port
from tasks.services import OFFLINE_SWITCHES
from tests.support import write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_prefect(tmp_path_factory):
    with LocalPrefect(tmp_path_factory.mktemp("prefect-home"), port=free_port()) as local:
        yield local


def test_release_cycle_is_deployed_weekly_with_production_parameters(local_prefect):
    out = local_prefect.prefect("deployment", "inspect", "calibration-release-cycle/release-cycle").stdout
    assert "0 3 * * 1" in out, f"weekly cron schedule: {out[-1500:]}"
    assert "configs/release.yaml" in out, "production parameters"


def test_the_server_and_the_worker_run_in_the_offline_environment(local_prefect):
    # the worker's flow runs inherit its environment: offline, litellm would fetch its price map
    assert [p.name for p in local_prefect.processes] == ["Prefect server", "Prefect worker"], local_prefect.processes
    for process in local_prefect.processes:
        environ = psutil.Process(process.pid).environ()
        missing = {k: v for k, v in OFFLINE_SWITCHES.items() if environ.get(k) != v}
        assert process.alive() and not missing, f"the {process.name} runs offline: missing {missing}"


def test_drift_monitor_is_deployed_daily(local_prefect):
    out = local_prefect.prefect("deployment", "inspect", "calibration-drift-monitor/drift-monitor").stdout
    assert "0 6 * * *" in out, f"daily cron schedule: {out[-1500:]}"


def test_ablation_deployment_run_with_overrides_creates_nested_runs(local_prefect, tmp_path):
    data_dir = tmp_path / "data"
    config_path = write_config(
        tmp_path / "ablation-small.yaml",
        data={"data_dir": str(data_dir), "synthetic": {"seed": 9, "pool_size": 120, "eval_size": 16}},
        scoring={"passes": 1, "shard_size": 64},
        evaluation={"latency_iterations": 1, "clipping_images": 4},
        tracking={"experiment": "deploy-e2e"},
    )
    local_prefect.prefect(
        "deployment",
        "run",
        "calibration-ablation/ablation",
        "--param",
        f"config_path={config_path}",
        "--param",
        f"strategies={json.dumps(['random', 'topk'])}",
        "--param",
        f"estimators={json.dumps(['MINMAX'])}",
        "--param",
        f"seeds={json.dumps([0])}",
        "--param",
        f"ks={json.dumps([16])}",
        "--watch",
        "--watch-timeout",
        "540",
        timeout=600,
    )
    client = MlflowClient(f"sqlite:///{data_dir.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("deploy-e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "ablation"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", f"one finished parent: {parents}"
    assert len(children) == 2, f"one nested run per cell (2 strategies × 1 estimator × 1 seed): {len(children)}"
    assert {c.data.params["strategy"] for c in children} == {"random", "topk"}, "the overrides were applied"
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children), "nested under it"
    assert all("gap.map" in c.data.metrics for c in children), "each cell logs its gap"
