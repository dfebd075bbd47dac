"""Every scoring process serves its own /metrics on the first free port of
`scoring.metrics_port` … `+ metrics_ports − 1`: a flow run and its Dask workers, or two runs
on one machine, side by side. Real processes and real sockets."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from tasks.loopback import free_port
from tests.support import ROOT

pytestmark = pytest.mark.integration

# Serves the process's scoring metrics, twice (the second call must keep the first port), prints
# the port and holds it until its stdin closes.
_SERVER = """
import sys
from tasks.config import ScoringConfig
from tasks.errors import ServiceError
from tasks.scoring.metrics import ScoringMetrics, serve_metrics

scoring = ScoringConfig(metrics_port=int(sys.argv[1]), metrics_ports=int(sys.argv[2]))
try:
    port = serve_metrics(scoring)
except ServiceError as error:
    print("error:", error, flush=True)
    sys.exit(3)
ScoringMetrics.shared().requests.labels(model="m", outcome="scored").inc(int(sys.argv[3]))
print(port, serve_metrics(scoring), flush=True)
sys.stdin.read()
"""


def _serve(first: int, ports: int, scored: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(first), str(ports), str(scored)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _scored(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    line = next(line for line in body.splitlines() if line.startswith("tailcal_scoring_requests_total{"))
    return float(line.rsplit(" ", 1)[1])


def _consecutive_free_ports(count: int) -> int:
    for _ in range(50):
        first = free_port()
        if first + count < 65536 and all(_is_free(first + i) for i in range(count)):
            return first
    raise RuntimeError("no run of free ports")


def _is_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_processes_side_by_side_each_take_a_port_of_the_range_and_the_range_has_an_end():
    # given a range of two free ports
    first = _consecutive_free_ports(2)
    processes = []
    try:
        # when two processes serve their metrics one after the other
        for scored in (5, 7):
            process = _serve(first, 2, scored)
            processes.append(process)
            line = process.stdout.readline().split()
            assert len(line) == 2, f"the process did not serve: {line}"
            port, again = map(int, line)
            # then each has its own port of the range, and serving again keeps it
            assert again == port, f"a second call moved the process from port {port} to {again}"
            assert _scored(port) == scored, f"port {port} serves another process's counters"
        assert sorted(_scored(p) for p in (first, first + 1)) == [5, 7], "each port of the range serves one process"

        # and a third process finds the range full: an error naming the range and both settings
        third = _serve(first, 2, 1)
        out, err = third.communicate(timeout=60)
        assert third.returncode == 3, f"the third process should refuse, got {third.returncode}: {out} {err[-500:]}"
        assert f"127.0.0.1:{first}-{first + 1}" in out, out
        assert "scoring.metrics_port" in out and "scoring.metrics_ports (now 2)" in out, out
    finally:
        for process in processes:
            process.communicate(timeout=30)


def test_one_port_taken_is_refused_with_the_fix():
    # given a port another program holds
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        # when a scoring process is told to serve there, with the default range of one
        process = _serve(port, 1, 1)
        out, err = process.communicate(timeout=60)
    finally:
        holder.close()
    # then it stops, naming the port and the two settings that fix it
    assert process.returncode == 3, f"expected a refusal, got {process.returncode}: {out} {err[-500:]}"
    assert f"127.0.0.1:{port} (" in out and "raise scoring.metrics_ports (now 1)" in out, out
