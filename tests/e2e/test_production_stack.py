"""The production column on one machine, end to end: `flows.stack.Stack` (what `make stack` runs)
with MLflow on PostgreSQL, one small release cycle through `prefect deployment run` on two
process workers, the pool and the artefacts in S3 (moto's server), every call through the
LiteLLM proxy, and Prometheus scraping the flow run.

One stack and one run for the whole module: each test reads what that run left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import boto3
import httpx
import psutil
import pytest
import redis
import yaml
from mlflow import MlflowClient

from flows.stack import DEPLOYMENT, MASTER_KEY_ENV, POSTGRES, S3_KEY_ENVS, Stack, StackPorts, answers, latest_run
from flows.stack import drop_postgres_database as drop_database
from tasks.loopback import free_port
from tasks.scoring.budget import BudgetLedger, to_nano
from tests.conftest import TEST_DB
from tests.support import ROOT, gateway_env_or_skip

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PRICE = {"input_eur_per_mtok": 0.14, "output_eur_per_mtok": 0.55}
CAP_EUR = 1.0
DASHBOARD = ROOT / "configs" / "grafana" / "tailcal-scoring.json"


@dataclass
class Run:
    stack: Stack
    config_path: Path
    data_dir: Path
    output: str
    started: float
    ended: float


def _config(tmp: Path, gateway_port: int, metrics_port: int, model: str) -> Path:
    """configs/stack.yaml at the test's size: 120 candidates, 16 eval images, K=16."""
    tree = yaml.safe_load((ROOT / "configs" / "stack.yaml").read_text())
    tree["data"] = {"data_dir": str(tmp / "data"), "synthetic": {"seed": 23, "pool_size": 120, "eval_size": 16}}
    tree["gateway"]["url"] = f"http://127.0.0.1:{gateway_port}/v1"
    # a model name of its own: a fresh cache namespace on a shared Redis, so the run pays for its calls
    tree["gateway"]["models"] = [{"name": model, **PRICE}]
    tree["budget"] = {"cap_eur": CAP_EUR, "alert_fraction": 0.002, "on_exhausted": "cached_only"}
    tree["scoring"] |= {"metrics_port": metrics_port, "shard_size": 64, "prompts_dir": str(ROOT / "configs/prompts")}
    tree["selection"]["k"] = 16
    tree["evaluation"] = {"gap_decomposition": False, "latency_iterations": 1, "clipping_images": 4}
    tree["tracking"] = {"experiment": "stack-e2e"}
    path = tmp / "stack-e2e.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not answers(*POSTGRES):
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432: the stack's MLflow would run on SQLite")
    gateway_env_or_skip()
    tmp = tmp_path_factory.mktemp("stack")
    config = _config(tmp, free_port(), free_port(), f"stack-vlm-{secrets.token_hex(4)}")
    ports = StackPorts(prefect=free_port(), mlflow=free_port(), s3=free_port(), prometheus=free_port())
    # REDIS_URL's server (CI sets it), else the one on :6379, else the embedded Valkey; tests own db TEST_DB
    server = os.environ.get("REDIS_URL") or ("redis://127.0.0.1:6379/0" if answers("127.0.0.1", 6379) else None)
    redis_url = urlunsplit(urlsplit(server)._replace(path=f"/{TEST_DB}")) if server else "embedded"
    database = f"tailcal_e2e_{secrets.token_hex(4)}"
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.MonkeyPatch.context() as env:
        for name in (MASTER_KEY_ENV, *S3_KEY_ENVS, "REDIS_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
            env.delenv(name, raising=False)  # the stack draws its own secrets
        env.setenv("PREFECT_LOGGING_LEVEL", "INFO")  # the flow run's logs reach the server (tests keep WARNING)
        try:
            with Stack(config, tmp / "home", ports, redis=redis_url, database=database, project=ROOT) as stack:
                started = time.time()
                result = stack.prefect.prefect(
                    "deployment", "run", DEPLOYMENT, "--param", f"config_path={config}",
                    "--watch", "--watch-timeout", "540",
                    timeout=600,
                )  # fmt: skip
                ended = time.time()
                yield Run(stack, config, tmp / "data", result.stdout + result.stderr, started, ended)
                started_by_stack = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
        finally:
            drop_database(database)
            if server:  # the house rule: tests use database TEST_DB of a shared Redis, and flush it
                with redis.Redis.from_url(redis_url) as client:
                    client.flushdb()
    _, alive = psutil.wait_procs(started_by_stack, timeout=10)
    assert not alive, f"left running after the stack stopped: {[p.cmdline()[:4] for p in alive]}"


def _api(run: Run, path: str, body: dict | None = None) -> list[dict]:
    response = httpx.post(f"{run.stack.prefect.api_url}/{path}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def _flow_run(run: Run) -> dict:
    flow_runs = _api(run, "flow_runs/filter")
    assert len(flow_runs) == 1, f"one flow run on the stack's server: {[r['name'] for r in flow_runs]}"
    return flow_runs[0]


def _mlflow_run(run: Run):
    client = MlflowClient(run.stack.info.mlflow_url)
    experiment = client.get_experiment_by_name("stack-e2e")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, f"one MLflow run: {[r.info.run_id for r in runs]}"
    return runs[0]


def _s3(run: Run):
    stack = run.stack
    return boto3.client(
        "s3",
        endpoint_url=stack.info.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=stack._secrets["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack._secrets["AWS_SECRET_ACCESS_KEY"],
    )


def _objects(run: Run, prefix: str = "") -> dict[str, bytes]:
    s3 = _s3(run)
    listed = s3.list_objects_v2(Bucket=run.stack.bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=run.stack.bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_the_release_cycle_ran_through_the_deployment_on_one_of_two_workers(run):
    flow_run = _flow_run(run)
    assert flow_run["state_type"] == "COMPLETED", f"the flow run completed: {flow_run['state_name']}\n{run.output}"
    assert flow_run["parameters"] == {"config_path": str(run.config_path)}, "only the config path is a parameter"
    workers = _api(run, "work_pools/tailcal-process/workers/filter")
    assert len(workers) == 2, f"two process workers polled the pool: {[w['name'] for w in workers]}"
    assert all(p.alive() for p in run.stack.prefect.processes), "the server and both workers are still up"


def test_the_mlflow_run_lives_on_the_server_with_its_artefacts_in_s3(run):
    mlflow_run = _mlflow_run(run)
    info = mlflow_run.info
    assert info.status == "FINISHED", f"the run finished: {info.status}"
    assert run.stack.info.mlflow_backend.startswith("postgresql"), run.stack.info.mlflow_backend
    assert info.artifact_uri.startswith("mlflow-artifacts:/"), f"served by the server: {info.artifact_uri}"
    keys = set(_objects(run, "mlartifacts/"))
    where = f"mlartifacts/{info.experiment_id}/{info.run_id}/artifacts"
    expected = {f"{where}/{name}" for name in ("report.md", "scores.parquet", "selection.parquet")}
    expected |= {f"{where}/ir/detector_int8.xml", f"{where}/ir/detector_int8.bin"}
    assert expected <= keys, f"artefacts in the moto bucket: missing {sorted(expected - keys)} of {sorted(keys)}"
    pointer = latest_run(run.stack.info, "stack-e2e")  # what `make stack-demo` prints
    assert f"/runs/{info.run_id}" in pointer and f"{info.run_id}/artifacts/" in pointer, pointer


def test_every_call_went_through_the_gateway_and_the_ledger_booked_exactly_what_it_served(run):
    stack = run.stack
    mlflow_run = _mlflow_run(run)
    paid = int(mlflow_run.data.metrics["scoring.calls"])
    served = stack.proxy.completions()
    scorer = stack.scorer.stats
    assert paid > 0, "the run paid for its cache misses"
    assert served[200] == paid == sum(served.values()), f"the proxy's log: {dict(served)}; tailcal paid {paid}"
    assert scorer["requests"] == paid, f"the scorer behind the proxy answered {scorer['requests']}, paid {paid}"
    prompt, completion = scorer["prompt_tokens"], scorer["completion_tokens"]
    billed = (prompt * PRICE["input_eur_per_mtok"] + completion * PRICE["output_eur_per_mtok"]) / 1e6
    client = redis.Redis.from_url(stack.info.redis_url)  # the Redis the workers were given
    try:
        state = BudgetLedger(client, stack.master_key, cap_eur=CAP_EUR, alert_fraction=0.002).state()
    finally:
        client.close()
    assert state.calls == paid, f"the ledger settled {state.calls} calls, {paid} were paid"
    # each call is booked to the nano-euro: the totals may differ by half a nano-euro per call
    assert abs(to_nano(state.spent_eur) - to_nano(billed)) <= paid, f"ledger €{state.spent_eur:.9f} vs €{billed:.9f}"
    assert state.alerted, "the budget alert fired (alert_fraction 0.002)"


def test_every_dashboard_query_returned_data_from_prometheus_during_the_run(run):
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    empty = []
    for expression in expressions:
        params = {"query": expression, "start": run.started, "end": run.ended, "step": 1}
        answer = httpx.get(f"{run.stack.info.prometheus_url}/api/v1/query_range", params=params, timeout=30).json()
        assert answer["status"] == "success", f"{expression}: {answer}"
        if not answer["data"]["result"]:
            empty.append(expression)
    assert expressions and not empty, f"dashboard queries without data during the run: {empty}"


def test_no_secret_reaches_a_store_a_log_or_an_artefact(run):
    stack = run.stack
    found = []

    def check(where: str, data: bytes | str) -> None:
        text = data if isinstance(data, bytes) else data.encode()
        found.extend(f"{where}" for value in stack.secret_values() if value.encode() in text)

    mlflow_run = _mlflow_run(run)
    check("MLflow params", json.dumps(mlflow_run.data.params))
    check("MLflow tags", json.dumps(mlflow_run.data.tags))
    for key, body in _objects(run).items():  # the pool and every artefact
        check(f"s3://{stack.bucket}/{key}", body)
    flow_run = _flow_run(run)
    check("Prefect flow-run parameters", json.dumps(flow_run["parameters"]))
    logs = _api(run, "logs/filter", {"limit": 200})
    assert logs, "the flow run's logs reached the Prefect server"
    check("Prefect logs", json.dumps(logs))
    check("prefect deployment run output", run.output)
    # every file of the stack (process logs, Prefect's and Prometheus' stores, the proxy's config)
    # and of the run's data directory, but the secrets file made for the user's shell
    for path in [*Path(stack.info.home).rglob("*"), *run.data_dir.rglob("*")]:
        if path.is_file() and path.name != "stack.env":
            check(str(path), path.read_bytes())
    assert not found, f"a secret value appears in: {sorted(set(found))}"
