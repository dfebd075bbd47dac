"""Scenario 3, stricter than tests/integration/scoring: 96 concurrent callers in 3 processes
on one virtual key, with the cap binding mid-run.

Spend never passes the cap; the ledger equals the sum of the settled costs the processes
recorded and counts exactly the calls the gateway answered; no reservation is left; and the
cap binds tightly: what is left under it is less than one call's worst-case cost, so no
process stopped early because of another's in-flight reservations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from tasks.scoring.budget import NANO, to_nano
from tasks.scoring.reference_scorer import ReferenceScorer, ScorerSettings
from tests.reliability.conftest import ROOT, subprocess_env

PROCESSES = 3
PER_PROCESS = 64
CAP_EUR = 0.004  # room for ~65 of the 192 calls at ~€0.00006 each (worst case €0.00015)
WORST_EUR = 0.000152  # one call's reservation for a 192-px image at these prices


@pytest.mark.slow
def test_three_processes_never_overspend_one_key_and_the_cap_binds_tightly(
    redis_url, redis_client, distinct_pool, tmp_path
):
    # given one virtual key with a cap that binds after about a third of 192 calls
    config = {
        "gateway": {
            "url": "embedded",
            "concurrency": 32,
            "max_retries": 0,
            "models": [{"name": "reference-vlm", "input_eur_per_mtok": 0.14, "output_eur_per_mtok": 0.55}],
        },
        "budget": {"cap_eur": CAP_EUR, "on_exhausted": "cached_only"},
        "scoring": {"passes": 1},
    }
    config_path = tmp_path / "race.yaml"
    config_path.write_text(yaml.safe_dump(config))
    server = ReferenceScorer(ScorerSettings(latency_s=0.2))
    server.start()
    try:
        env = subprocess_env(REDIS_URL=redis_url, TAILCAL_TEST_API_BASE=server.base_url)
        # when 3 processes score 64 distinct candidates each, 32 calls in flight per process
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.scoring.worker",
                    str(config_path),
                    str(distinct_pool),
                    str(500 + n * PER_PROCESS),
                    str(PER_PROCESS),
                    str(tmp_path / f"w{n}.json"),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for n in range(PROCESSES)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=200)
            assert proc.returncode == 0, f"worker failed: {err.decode()[-2000:]}"
    finally:
        server.stop()
    records = [r for n in range(PROCESSES) for r in json.loads((tmp_path / f"w{n}.json").read_text())]
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
