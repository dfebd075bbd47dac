"""Scoring scaled out on Dask: `tailcal score` with `scoring.runner: dask` (a local cluster of two
worker processes) and one more scoring process share one virtual key's budget cap, one rpm limit
and one score cache in Redis.

Each worker serves its own /metrics on a port of the range, spend stays within the cap, no
60-second window holds more sends than the rpm limit (and no 10-second window more than its
share), every candidate comes back scored, failed or unscored with a reason, and no image is
paid for twice.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from tasks.config import SyntheticConfig
from tasks.loopback import LoopbackServer, free_port
from tasks.scoring.budget import NANO, to_nano
from tasks.synth.write import write_pool
from tasks.testing.reference_scorer import ScorerSettings, create_app
from tests.support import ROOT, wait_until, worker_command, worker_env, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

RPM = 120
CAP_EUR = 0.0055  # room for ~90 of the ~200 calls wanted (~€0.00006 each, €0.000152 reserved)
FLOW_CANDIDATES = 120
WORKER_CANDIDATES = 80


class _TimedCounter(Counter):
    """The scorer's request counter, also noting when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    def __setitem__(self, key, value) -> None:
        if key == "requests":
            self.arrivals.append(time.monotonic())
        super().__setitem__(key, value)


def _busiest(arrivals: list[float], window_s: float) -> int:
    times = sorted(arrivals)
    start, most = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


class _MetricsPoller(threading.Thread):
    """Scrapes `ports` every half second, keeping the highest request count each port showed."""

    def __init__(self, ports: range) -> None:
        super().__init__(daemon=True)
        self.ports, self.requests, self.done = ports, dict.fromkeys(ports, 0.0), threading.Event()

    def run(self) -> None:
        import urllib.request

        while not self.done.wait(0.5):
            for port in self.ports:
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                except OSError:
                    continue
                count = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in body.splitlines()
                    if line.startswith("tailcal_scoring_requests_total{")
                )
                self.requests[port] = max(self.requests[port], count)


def test_dask_workers_and_another_process_share_the_cap_and_the_rpm_limit(
    redis_url, redis_client, distinct_pool, tmp_path, monkeypatch
):
    # given a gateway that logs arrivals, and a pool of its own for the flow
    stats, answered = _TimedCounter(), []
    server = LoopbackServer(create_app(ScorerSettings(latency_s=0.2), stats, answered), "reference scorer", 0)
    server.start()
    flow_pool = tmp_path / "flow-pool"
    write_pool(SyntheticConfig(seed=31, burst_probability=0.0), flow_pool, n=FLOW_CANDIDATES)
    shared = {
        "gateway": {"url": f"{server.base_url}/v1", "concurrency": 16, "max_retries": 1, "rpm": RPM},
        "budget": {"cap_eur": CAP_EUR, "on_exhausted": "cached_only"},
        "scoring": {"passes": 1},
    }
    first_port = free_port()
    metrics = {"metrics_port": first_port, "metrics_ports": 4}  # the flow run and its two workers
    poller = _MetricsPoller(range(first_port, first_port + 4))
    flow_config = write_config(
        tmp_path / "flow.yaml",
        data={"data_dir": str(tmp_path / "data")},
        pool={"uri": str(flow_pool)},
        **{**shared, "scoring": {"passes": 1, "runner": "dask", "dask_workers": 2, "shard_size": 16} | metrics},
        tracking={"experiment": "dask-race"},
    )
    worker_config = write_config(tmp_path / "worker.yaml", **shared)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("TAILCAL_GATEWAY_KEY", "race-key")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    # when the flow scores on two Dask workers and, once its first call is out, another process joins
    outcome: dict = {}
    flow = threading.Thread(target=lambda: outcome.update(code=main(["score", "--config", str(flow_config)])))
    flow.start()
    poller.start()
    try:
        assert wait_until(lambda: stats["requests"] > 0, timeout_s=240), "the flow never called the gateway"
        other = subprocess.Popen(
            worker_command(worker_config, distinct_pool, 900, WORKER_CANDIDATES, tmp_path / "other.json"),
            env=worker_env(redis_url, f"{server.base_url}/v1") | {"TAILCAL_GATEWAY_KEY": "race-key"},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = other.communicate(timeout=300)
        flow.join(timeout=300)
    finally:
        server.stop()
        poller.done.set()
    assert other.returncode == 0, f"the other process failed: {err.decode()[-2000:]}"
    assert outcome.get("code") == 0, f"tailcal score exited {outcome.get('code')}"

    # then every candidate of both is accounted for, with a reason unless scored
    import json

    scores = pq.read_table(next((tmp_path / "data" / "runs").glob("*/scores.parquet"))).to_pylist()
    records = json.loads((tmp_path / "other.json").read_text())
    assert len(scores) == FLOW_CANDIDATES and len(records) == WORKER_CANDIDATES, "one row per candidate"
    statuses = Counter(r["status"] for r in records)
    assert set(statuses) <= {"scored", "cached", "failed", "unscored"}, statuses
    assert all(r["reason"] for r in records if r["status"] in {"failed", "unscored"}), "each miss says why"

    # and spend stayed within the cap, the cap bound, and each image was paid for once
    ledger = redis_client.hgetall(next(redis_client.scan_iter(match="tailcal:budget:*")))
    spent, calls = int(ledger[b"spent"]), int(ledger[b"calls"])
    busiest_minute, busiest_10s = _busiest(stats.arrivals, 60.0), _busiest(stats.arrivals, 10.0)
    print(
        f"dask race: {stats['requests']} requests, ledger calls {calls}, spent €{spent / NANO:.6f} of €{CAP_EUR}; "
        f"busiest 60 s {busiest_minute} (rpm {RPM}), busiest 10 s {busiest_10s}; other process {dict(statuses)}"
    )
    assert spent <= to_nano(CAP_EUR), f"spend €{spent / NANO} exceeded the cap €{CAP_EUR}"
    assert statuses["unscored"] > 0 or any(r["status"] == "unscored" for r in scores), "the cap binds"
    assert len(answered) == len(set(answered)) == calls, "no image was paid for twice, each booked once"

    # and each worker process served its own counts for Prometheus
    serving = {port: count for port, count in poller.requests.items() if count > 0}
    print(f"metrics: requests counted per port {poller.requests}")
    assert len(serving) >= 2, f"two Dask workers should each serve their counts on a port of the range: {serving}"

    # and the rpm limit held across the three processes
    assert busiest_minute <= RPM, f"{busiest_minute} sends in one minute at rpm {RPM}"
    # Sends are spaced 61/(rpm − 1) s apart (tasks/scoring/ratelimit.py); a few late wakers may bunch.
    assert busiest_10s <= RPM // 6 + 4, f"{busiest_10s} sends in 10 s: the sends were not spread at rpm {RPM}"
