"""`make stack` as a user runs it: `python -m flows.stack up` in a process group of its own, as a
terminal runs it, on the variant for a machine without PostgreSQL or a Redis server (MLflow on
SQLite, the embedded Valkey). Two release cycles sent to the deployment at once run side by
side on the two workers, each serving its metrics on its own port of the range; then Ctrl-C
(SIGINT to the group) stops every process the stack started, and nothing else.

tests/e2e/test_production_stack.py covers the PostgreSQL variant and what one run leaves behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from flows.stack import DEPLOYMENT, MASTER_KEY_ENV, S3_KEY_ENVS
from tasks.loopback import free_port
from tests.support import ROOT, gateway_env_or_skip

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXPERIMENT = "stack-sqlite-e2e"
RUNS = 2


def _config(tmp: Path) -> Path:
    """configs/stack.yaml at the test's size: 120 candidates, 16 eval images, K=16; ports of its own."""
    tree = yaml.safe_load((ROOT / "configs" / "stack.yaml").read_text())
    tree["data"] = {"data_dir": str(tmp / "data"), "synthetic": {"seed": 29, "pool_size": 120, "eval_size": 16}}
    tree["gateway"]["url"] = f"http://127.0.0.1:{free_port()}/v1"
    first = free_port()
    tree["scoring"] |= {
        "metrics_port": first,
        "metrics_ports": 4,
        "shard_size": 64,
        "prompts_dir": str(ROOT / "configs/prompts"),
    }
    tree["selection"]["k"] = 16
    tree["evaluation"] = {"gap_decomposition": False, "latency_iterations": 1, "clipping_images": 4}
    tree["tracking"] = {"experiment": EXPERIMENT}
    path = tmp / "stack-sqlite.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            out, _ = process.communicate()
            pytest.fail(f"`flows.stack up` exited {process.returncode} before it was up:\n{out[-4000:]}")
        assert time.monotonic() < deadline, f"the stack was not up after {timeout_s:.0f} s"
        time.sleep(1)


def _flow_runs_finish(api: str, ids: list[str], timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [httpx.get(f"{api}/flow_runs/{i}", timeout=30).json() for i in ids]
        if all(r["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} for r in runs):
            return runs
        assert time.monotonic() < deadline, f"flow runs still going after {timeout_s:.0f} s: {runs}"
        time.sleep(3)


def _logs(api: str, flow_run_id: str) -> list[dict]:
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    return httpx.post(f"{api}/logs/filter", json=body, timeout=30).json()


def _metrics_ports(api: str, flow_run_id: str) -> set[int]:
    logs = _logs(api, flow_run_id)
    return {int(m) for log in logs for m in re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log["message"])}


def _why(api: str, run: dict) -> str:
    """A finished flow run's name, state, state message and last warning or error lines."""
    lines = [log["message"][-1500:] for log in _logs(api, run["id"]) if log["level"] >= 30][-3:]
    return f"{run['name']}: {run['state_name']} ({(run.get('state') or {}).get('message')}) {lines}"


def test_two_runs_side_by_side_on_sqlite_then_ctrl_c_stops_everything_the_stack_started(tmp_path):
    gateway_env_or_skip()
    # given the stack started as `make stack` starts it, with MLflow on SQLite and the embedded Valkey
    config = _config(tmp_path)
    home = tmp_path / "home"
    ports = {name: free_port() for name in ("prefect", "mlflow", "s3", "prometheus")}
    env = {k: v for k, v in os.environ.items() if k not in {MASTER_KEY_ENV, *S3_KEY_ENVS, "REDIS_URL"}}
    env = {k: v for k, v in env.items() if k not in {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env["PREFECT_LOGGING_LEVEL"] = "INFO"  # the flow runs' logs reach the server (tests keep WARNING)
    command = [sys.executable, "-m", "flows.stack", "up", "--config", str(config), "--home", str(home)]
    command += [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
    command += ["--redis", "embedded", "--database", "sqlite"]
    stack = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    bystander = subprocess.Popen(["sleep", "900"])  # a process of the same user the stack did not start
    started: list[psutil.Process] = []
    try:
        _wait_for(home / "stack.json", stack, timeout_s=600)
        api = f"http://127.0.0.1:{ports['prefect']}/api"

        # when two release cycles are sent to the deployment at once
        flow, name = DEPLOYMENT.split("/")
        deployment = httpx.get(f"{api}/deployments/name/{flow}/{name}", timeout=30).json()
        ids = [
            httpx.post(
                f"{api}/deployments/{deployment['id']}/create_flow_run",
                json={"parameters": {"config_path": str(config)}},
                timeout=30,
            ).json()["id"]
            for _ in range(RUNS)
        ]
        runs = _flow_runs_finish(api, ids, timeout_s=900)

        # then both completed, side by side, each serving its metrics on its own port of the range
        assert [r["state_type"] for r in runs] == ["COMPLETED"] * RUNS, [_why(api, r) for r in runs]
        first, last = runs[0], runs[1]
        assert first["start_time"] < last["end_time"] and last["start_time"] < first["end_time"], "they overlapped"
        ports_served = [_metrics_ports(api, i) for i in ids]
        assert all(len(p) == 1 for p in ports_served), f"each run logs the port it served metrics on: {ports_served}"
        assert ports_served[0] != ports_served[1], f"the runs shared a metrics port: {ports_served}"

        # and MLflow, on SQLite, holds both runs, finished
        mlflow = f"http://127.0.0.1:{ports['mlflow']}/api/2.0/mlflow"
        experiment = httpx.get(
            f"{mlflow}/experiments/get-by-name", params={"experiment_name": EXPERIMENT}, timeout=30
        ).json()["experiment"]
        found = httpx.post(f"{mlflow}/runs/search", json={"experiment_ids": [experiment["experiment_id"]]}, timeout=30)
        statuses = sorted(r["info"]["status"] for r in found.json().get("runs", []))
        assert statuses == ["FINISHED"] * RUNS, f"MLflow runs: {statuses}"
        assert (home / "mlflow.db").exists(), "the MLflow server's SQLite store is in the stack's home"

        # when Ctrl-C reaches the stack's process group, as a terminal sends it
        started = psutil.Process(stack.pid).children(recursive=True)
        assert len(started) >= 6, f"the stack's servers and workers: {[p.name() for p in started]}"
        os.killpg(stack.pid, signal.SIGINT)
        out, _ = stack.communicate(timeout=180)

        # then the stack exits cleanly, everything it started is gone, and nothing else is
        assert stack.returncode == 0, f"`flows.stack up` exited {stack.returncode} on Ctrl-C:\n{out[-3000:]}"
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"left running after Ctrl-C: {[p.cmdline()[:4] for p in alive]}"
        assert bystander.poll() is None, "a process the stack did not start was stopped"
    finally:
        if stack.poll() is None:  # a failed check above: stop the stack the way a user would, then make sure
            started = psutil.Process(stack.pid).children(recursive=True)
            os.killpg(stack.pid, signal.SIGINT)
            try:
                stack.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
        for process in started:
            if process.is_running():
                process.kill()
        bystander.kill()
