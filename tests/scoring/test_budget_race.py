"""Scenario 3, stricter than tests/scoring/test_scoring.py: 96 concurrent callers in 3 processes
on one virtual key, with the cap binding mid-run.

Spend never passes the cap; the ledger equals the sum of the settled costs the processes
recorded and counts exactly the calls the gateway answered; no reservation is left; and the
cap binds tightly: what is left under it is less than one call's worst-case cost, so no
process stopped early because of another's in-flight reservations.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tasks.scoring.budget import NANO, to_nano
from tasks.testing.reference_scorer import ScorerSettings
from tests.support import run_workers, start_scorer, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PROCESSES = 3
PER_PROCESS = 64
CAP_EUR = 0.004  # room for ~65 of the 192 calls at ~€0.00006 each (worst case €0.00015)
WORST_EUR = 0.000152  # one call's reservation for a 192-px image at these prices


def test_three_processes_never_overspend_one_key_and_the_cap_binds_tightly(
    redis_url, redis_client, distinct_pool, tmp_path
):
    # given one virtual key with a cap that binds after about a third of 192 calls
    config_path = write_config(
        tmp_path / "race.yaml",
        gateway={"concurrency": 32, "max_retries": 0},
        budget={"cap_eur": CAP_EUR, "on_exhausted": "cached_only"},
        scoring={"passes": 1},
    )
    server = start_scorer(ScorerSettings(latency_s=0.2))
    try:
        # when 3 processes score 64 distinct candidates each, 32 calls in flight per process
        slices = [(500 + n * PER_PROCESS, PER_PROCESS) for n in range(PROCESSES)]
        records = run_workers(config_path, distinct_pool, redis_url, server.base_url, slices, tmp_path, timeout_s=200)
    finally:
        server.stop()
    ledger = redis_client.hgetall(next(redis_client.scan_iter(match="tailcal:budget:*")))
    spent, reserved, calls = int(ledger[b"spent"]), int(ledger[b"reserved"]), int(ledger[b"calls"])
    paid = [r for r in records if r["status"] == "scored"]
    statuses = Counter(r["status"] for r in records)
    print(
        f"budget race: {PROCESSES} processes, {dict(statuses)}, spent €{spent / NANO:.6f} of cap €{CAP_EUR}, "
        f"ledger calls {calls}, answered {server.stats['ok']}, reserved {reserved} nEUR"
    )
    # then every candidate is accounted for and the cap was reached
    assert len(records) == PROCESSES * PER_PROCESS, f"{len(records)} records for {PROCESSES * PER_PROCESS} candidates"
    assert set(statuses) <= {"scored", "unscored"} and statuses["unscored"] > 0, f"the cap binds: {dict(statuses)}"
    # and spend is within the cap and equals the settled costs, each answered call booked once
    assert spent <= to_nano(CAP_EUR), f"spend €{spent / NANO} exceeded the cap €{CAP_EUR}"
    assert spent == sum(to_nano(r["cost_eur"]) for r in paid), "ledger equals the sum of settled costs"
    assert calls == len(paid) == server.stats["ok"] == server.stats["requests"], (
        f"ledger calls {calls}, scored {len(paid)}, answered {server.stats['ok']}, requests {server.stats['requests']}"
    )
    assert reserved == 0, f"{reserved} nEUR left reserved"
    # and the cap binds tightly: less than one worst-case call of room is left unused
    assert to_nano(CAP_EUR) - spent < to_nano(WORST_EUR), (
        f"€{(to_nano(CAP_EUR) - spent) / NANO:.6f} left under the cap with {statuses['unscored']} candidates unscored"
    )
