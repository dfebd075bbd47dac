"""Scenario 1: ~20 % injected gateway faults over a 2,000-candidate, 2-pass run.

Every candidate × pass must end scored or failed with a reason; retries stay within the
cap; spend stays within the budget; the ledger equals the sum of settled costs, and the
per-candidate records (what scores.parquet and the MLflow spend metric are built from)
account for every euro the ledger booked, paid invalid replies included.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tasks.scoring.budget import NANO, BudgetLedger, to_nano
from tasks.scoring.passes import REPLY_ATTEMPTS, score_shard
from tasks.testing.reference_scorer import FaultPlan, ReferenceScorer, ScorerSettings
from tests.support import rows, scoring_config, session_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CANDIDATES = 2000
PASSES = 2
MAX_RETRIES = 2
SHARD = 500
CAP_EUR = 1.0
PLAN = FaultPlan(
    rate_limit=0.05,
    server_error=0.05,
    hang=0.03,
    malformed_json=0.035,
    prose=0.035,  # 20 % of requests in all
    retry_after_s=1,
    hang_s=1.0,
    seed=7,
)


class SpyLedger(BudgetLedger):
    """The real Redis ledger, recording every settlement of a sent request the scoring code makes."""

    settled_nano: list[int]

    def settle(self, token: str, actual_eur: float, sent: bool = True):
        if sent:
            self.settled_nano.append(to_nano(actual_eur))
        else:
            assert actual_eur == 0, f"an unsent attempt booked €{actual_eur}"
        return super().settle(token, actual_eur, sent)


def test_faulty_gateway_accounts_for_every_candidate_within_retry_cap_and_budget(redis_client, distinct_pool):
    # given 2,000 distinct candidates and a gateway answering ~20 % of requests with a fault
    candidates = rows(distinct_pool)
    assert len(candidates) == CANDIDATES, f"the generated pool holds {len(candidates)} rows"
    config = scoring_config(
        gateway={"max_retries": MAX_RETRIES, "timeout_s": 0.5, "concurrency": 32},
        budget={"cap_eur": CAP_EUR},
        scoring={"passes": PASSES},
    )
    server = ReferenceScorer(ScorerSettings(faults=PLAN))
    server.start()
    try:
        session = session_for(config, redis_client, server.base_url)
        session.ledger.__class__ = SpyLedger
        session.ledger.settled_nano = []
        # when the pool is scored shard by shard
        started = time.monotonic()
        records = []
        for start in range(0, CANDIDATES, SHARD):
            records.extend(score_shard(session, candidates[start : start + SHARD]))
        wall_s = time.monotonic() - started
        time.sleep(PLAN.hang_s)  # let hung requests the client gave up on finish server-side
    finally:
        server.stop()

    print(
        f"gateway faults: {dict(Counter(r.status for r in records))} of {CANDIDATES}×{PASSES} in {wall_s:.0f} s; "
        f"server {dict(server.stats)}; spent €{session.ledger.state().spent_eur:.6f} of cap €{CAP_EUR}"
    )
    # then every candidate × pass has exactly one record: scored, or failed with a reason
    statuses = Counter(r.status for r in records)
    keys = Counter((r.id, r.pass_index) for r in records)
    assert len(keys) == CANDIDATES * PASSES and max(keys.values()) == 1, (
        f"{len(keys)} distinct (id, pass) records, expected {CANDIDATES * PASSES}, each once"
    )
    assert statuses["scored"] + statuses["cached"] + statuses["failed"] == CANDIDATES * PASSES, (
        f"records add up to {CANDIDATES}×{PASSES}: {dict(statuses)}"
    )
    unexplained = [r for r in records if r.status == "failed" and not r.reason]
    assert not unexplained, f"{len(unexplained)} failures without a reason, e.g. {unexplained[:2]}"
    assert statuses["scored"] + statuses["cached"] >= 0.9 * CANDIDATES * PASSES, (
        f"with {MAX_RETRIES} retries and 2 reply attempts most calls succeed: {dict(statuses)} in {wall_s:.0f} s"
    )
    assert all(0.0 <= r.difficulty <= 1.0 for r in records if r.status in {"scored", "cached"}), "scores in [0, 1]"
    faults = {k: server.stats[k] for k in ("rate_limit", "server_error", "hang", "malformed_json", "prose")}
    assert all(faults.values()), f"every fault class was injected: {faults}"

    # and retries stay within the cap: per call ≤ (max_retries + 1) HTTP requests, ≤ 2 reply attempts
    bound = CANDIDATES * PASSES * (MAX_RETRIES + 1) * REPLY_ATTEMPTS
    assert server.stats["requests"] <= bound, f"{server.stats['requests']} server requests > bound {bound}"
    per_call = Counter(server.answered)
    worst = max(per_call.values())
    assert worst <= (MAX_RETRIES + 1) * REPLY_ATTEMPTS, (
        f"one (image, seed) was answered {worst} times > {(MAX_RETRIES + 1) * REPLY_ATTEMPTS}"
    )

    # and spend stays within the cap, the ledger equals the sum of settlements, nothing stays reserved
    state = session.ledger.state()
    spent_nano = to_nano(state.spent_eur)
    settled = session.ledger.settled_nano
    assert spent_nano <= to_nano(CAP_EUR), f"spent €{state.spent_eur} > cap €{CAP_EUR}"
    assert spent_nano == sum(settled), f"ledger {spent_nano} nEUR != sum of {len(settled)} settlements {sum(settled)}"
    assert state.calls == len(settled), f"ledger counts {state.calls} settlements, the client made {len(settled)}"
    assert state.reserved_eur == 0, f"€{state.reserved_eur} still reserved after the run"
    paid_invalid = server.stats["malformed_json"] + server.stats["prose"]
    assert sum(1 for n in settled if n > 0) >= statuses["scored"] + paid_invalid - server.stats["hang"], (
        "every answered call that reached the client is settled at a cost (paid invalid replies included)"
    )

    # and the records account for every euro the ledger booked (scores.parquet / MLflow spend)
    recorded_nano = sum(to_nano(r.cost_eur) for r in records)
    assert recorded_nano == spent_nano, (
        f"records carry €{recorded_nano / NANO:.6f} but the ledger booked €{spent_nano / NANO:.6f}: "
        f"€{(spent_nano - recorded_nano) / NANO:.6f} of paid invalid replies is attributed to no candidate"
    )
