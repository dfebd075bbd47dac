"""`make ui` as a user runs it: both UIs answer, every server runs in the offline environment,
and Ctrl-C stops everything the target started."""

from __future__ import annotations

import os
import time

import httpx
import psutil
import pytest

from tasks.loopback import free_port
from tasks.services import OFFLINE_SWITCHES
from tests.support import ctrl_c, make_target, subprocess_env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_S = 240  # both servers on a busy 2-core machine


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_make_ui_serves_both_uis_offline_and_ctrl_c_stops_everything_it_started(tmp_path):
    # given `make ui` on free ports and this test's stores, from an environment without the offline switches
    mlflow_port, prefect_port = free_port(), free_port()
    env = {k: v for k, v in subprocess_env().items() if k not in OFFLINE_SWITCHES}
    variables = {"UI_MLFLOW_PORT": str(mlflow_port), "UI_PREFECT_PORT": str(prefect_port)}
    variables |= {"DEMO_DATA": str(tmp_path / "demo"), "UI_PREFECT_HOME": str(tmp_path / "prefect")}
    (tmp_path / "demo").mkdir()
    log = tmp_path / "make-ui.log"
    urls = [f"http://127.0.0.1:{mlflow_port}/health", f"http://127.0.0.1:{prefect_port}/api/health"]
    started = time.monotonic()
    with make_target("ui", variables, log, env) as make:
        # when both UIs answer
        up = wait_until(lambda: make.poll() is not None or all(_answers(url) for url in urls), START_S, step_s=0.5)
        assert up and make.poll() is None, f"both UIs answer within {START_S} s:\n{log.read_text()[-3000:]}"
        print(f"make ui: both UIs answered {time.monotonic() - started:.1f} s after make started")
        # then every server runs in the offline environment (the launcher set it; make's environment lacks it)
        running = psutil.Process(make.pid).children(recursive=True)
        servers = [p for p in running if os.getsid(p.pid) != os.getsid(make.pid)]
        assert len(servers) >= 2, f"the MLflow and Prefect servers run in sessions of their own: {running}"
        for server in servers:
            environ = server.environ()
            missing = {k: v for k, v in OFFLINE_SWITCHES.items() if environ.get(k) != v}
            assert not missing, f"{' '.join(server.cmdline()[:4])} lacks {missing}"
        # when Ctrl-C reaches make's process group
        started_processes = ctrl_c(make)
    # then nothing it started is left running, and both ports are free
    _, alive = psutil.wait_procs(started_processes, timeout=30)
    assert not alive, f"left running after Ctrl-C: {[p.cmdline()[:4] for p in alive]}"
    assert not any(_answers(url) for url in urls), "nothing answers on the UI ports after Ctrl-C"
