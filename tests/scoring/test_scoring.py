"""Scoring through the reference scorer over HTTP with a real Valkey/Redis ledger and cache."""

import hashlib
import json
import signal
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from tasks.scoring.budget import NANO, BudgetLedger, Reservation, to_nano
from tasks.scoring.cache import phash64
from tasks.scoring.passes import namespace, score_shard
from tasks.scoring.prompts import load_template
from tasks.scoring.ratelimit import slot_interval_s
from tasks.testing.reference_scorer import FaultPlan, ScorerSettings
from tests.support import (
    PROMPTS_DIR,
    ROOT,
    rows,
    run_workers,
    scoring_config,
    session_for,
    start_scorer,
    wait_until,
    worker_command,
    worker_env,
    write_config,
)

pytestmark = pytest.mark.integration


def test_two_passes_score_every_candidate_and_bursts_are_paid_once(redis_client, scorer, pool_dir):
    config = scoring_config(scoring={"passes": 2})
    candidates = rows(pool_dir, 0, 60)
    records = score_shard(session_for(config, redis_client, scorer.base_url), candidates)
    statuses = Counter(r.status for r in records)
    assert len(records) == 120 and set(statuses) <= {"scored", "cached"}, f"every candidate × pass: {statuses}"
    assert statuses["cached"] > 0, "burst frames hit the cache instead of being paid"
    assert scorer.stats["ok"] == statuses["scored"], "each paid call is one scored record"
    seeds = {seed for _, seed in scorer.answered}
    assert seeds == {0, 1}, f"the passes use distinct seeds: {seeds}"

    again = score_shard(session_for(config, redis_client, scorer.base_url), candidates)
    assert all(r.status == "cached" for r in again), "a rerun is served entirely by the cache"
    assert scorer.stats["ok"] == statuses["scored"], "a rerun pays nothing"


def test_budget_is_never_exceeded_by_64_concurrent_callers_in_two_processes(
    redis_url, redis_client, pool_dir, tmp_path
):
    cap = 0.0015  # room for roughly a third of the 64 calls at ~€0.00006 each, worst case €0.00015
    config_path = write_config(
        tmp_path / "race.yaml",
        gateway={"concurrency": 32, "max_retries": 0},
        budget={"cap_eur": cap, "on_exhausted": "cached_only"},
        scoring={"passes": 1},
    )
    server = start_scorer(ScorerSettings(latency_s=0.2))
    try:
        records = run_workers(config_path, pool_dir, redis_url, server.base_url, [(0, 100), (100, 100)], tmp_path)
    finally:
        server.stop()
    ledger = redis_client.hgetall(next(redis_client.scan_iter(match="tailcal:budget:*")))
    spent_nano = int(ledger[b"spent"])
    paid = [r for r in records if r["status"] == "scored"]
    statuses = Counter(r["status"] for r in records)
    assert spent_nano <= to_nano(cap), f"spend €{spent_nano / NANO} exceeded the cap €{cap}"
    assert statuses["unscored"] > 0, f"the cap must bind in this test: {statuses}"
    assert spent_nano == sum(to_nano(r["cost_eur"]) for r in paid), "ledger equals the sum of settled costs"
    assert int(ledger[b"calls"]) == len(paid) == server.stats["ok"], "every answered call is booked exactly once"
    assert int(ledger[b"reserved"]) == 0, "no reservation is left hanging"


class _Hook(BaseHTTPRequestHandler):
    posts: ClassVar[list] = []

    def do_POST(self):
        self.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alert_fires_once_with_webhook_and_metric(redis_client, scorer, pool_dir):
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.posts = []
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{hook.server_address[1]}/alert"
        config = scoring_config(budget={"cap_eur": 0.01, "alert_fraction": 0.05, "webhook_url": url})
        session = session_for(config, redis_client, scorer.base_url)
        score_shard(session, rows(pool_dir, 0, 60))
        score_shard(session, rows(pool_dir, 60, 60))
    finally:
        hook.shutdown()
    assert len(session.alerts) == 1, f"the alert fires exactly once: {session.alerts}"
    assert len(_Hook.posts) == 1 and _Hook.posts[0]["event"] == "tailcal.budget_alert", f"one webhook: {_Hook.posts}"
    assert (
        session.metrics.registry.get_sample_value("tailcal_budget_alerts_total", {"ledger": session.ledger_label}) == 1
    ), "the alert is counted once"
    assert "test-key" not in json.dumps(_Hook.posts), "the webhook never carries the virtual key"


def test_every_dashboard_series_exists_at_zero_when_a_session_opens(redis_client, scorer):
    # given a fresh session (nothing scored, no failure, no alert, the cap far away)
    config = scoring_config(budget={"cap_eur": 1.0})
    session = session_for(config, redis_client, scorer.base_url, key="fresh-dashboard-key")
    registry, ledger = session.metrics.registry, {"ledger": session.ledger_label}
    # then the series a dashboard query reads hold 0 instead of being absent
    model = {"model": "reference-vlm"}
    expected = {
        ("tailcal_budget_exhausted", frozenset(ledger.items())): 0.0,
        ("tailcal_budget_alerts_total", frozenset(ledger.items())): 0.0,
        ("tailcal_budget_spent_eur", frozenset(ledger.items())): 0.0,
        ("tailcal_gateway_attempt_failures_total", frozenset(model.items())): 0.0,
        ("tailcal_cache_lookups_total", frozenset({"result": "hit"}.items())): 0.0,
    }
    found = {key: registry.get_sample_value(key[0], dict(key[1])) for key in expected}
    assert found == expected, f"series at 0 from the start: {found}"


def test_cached_only_stops_every_call_at_the_cap(redis_client, scorer, pool_dir):
    config = scoring_config(budget={"cap_eur": 0.00001, "on_exhausted": "cached_only"})
    records = score_shard(session_for(config, redis_client, scorer.base_url), rows(pool_dir, 0, 20))
    assert all(r.status == "unscored" and r.reason == "budget exhausted" for r in records), "all reported unscored"
    assert scorer.stats["requests"] == 0, "no call leaves the process at the cap"


def test_fallback_model_takes_over_when_the_primary_no_longer_fits(redis_client, scorer, pool_dir):
    config = scoring_config(
        gateway={
            "models": [
                {"name": "big-vlm", "input_eur_per_mtok": 5.0, "output_eur_per_mtok": 15.0},
                {"name": "small-vlm", "input_eur_per_mtok": 0.05, "output_eur_per_mtok": 0.2},
            ],
            "concurrency": 4,
        },
        budget={"cap_eur": 0.01, "on_exhausted": "fallback_model", "fallback_model": "small-vlm"},
    )
    session = session_for(config, redis_client, scorer.base_url)
    records = score_shard(session, rows(pool_dir, 0, 80))
    models = Counter(r.model for r in records if r.status == "scored")
    assert models["big-vlm"] > 0 and models["small-vlm"] > 0, f"primary first, then the fallback: {models}"
    assert session.ledger.state().spent_eur <= 0.01, "the fallback stays within the same cap"


PRIMARY_AND_BACKUP = [
    {"name": "primary-vlm", "input_eur_per_mtok": 0.14, "output_eur_per_mtok": 0.55},
    {"name": "backup-vlm", "input_eur_per_mtok": 0.3, "output_eur_per_mtok": 1.2},
]


def test_provider_fallback_serves_when_the_primary_model_is_down(redis_client, pool_dir):
    config = scoring_config(
        gateway={
            "models": PRIMARY_AND_BACKUP,
            "max_retries": 1,
        },
    )
    server = start_scorer(ScorerSettings(faults=FaultPlan(failing_models=("primary-vlm",))))
    try:
        session = session_for(config, redis_client, server.base_url)
        records = score_shard(session, rows(pool_dir, 0, 10))
    finally:
        server.stop()
    assert {r.status for r in records} <= {"scored", "cached"}, f"all scored: {Counter(r.status for r in records)}"
    assert {r.model for r in records if r.status == "scored"} == {"backup-vlm"}, "the backup served every call"
    assert server.stats["model_down"] > 0, "the primary was tried first"
    backup_cost = session.gateway.cost("backup-vlm", 300, 40)
    assert all(r.cost_eur <= backup_cost for r in records), "cost is booked at the serving model's price"
    assert session.ledger.state().reserved_eur == 0, "reservations covered the pricier fallback and were released"


FAULTS = {
    "rate_limit": (FaultPlan(rate_limit=0.25, retry_after_s=0, seed=1), {"scored"}, ""),
    "server_error": (FaultPlan(server_error=1.0), {"failed"}, "InternalServerError"),
    "hang": (FaultPlan(hang=1.0, hang_s=3.0), {"failed"}, "Timeout"),
    "malformed_json": (FaultPlan(malformed_json=1.0), {"failed"}, "invalid reply: not JSON"),
    "prose": (FaultPlan(prose=1.0), {"failed"}, "invalid reply: not JSON"),
    "out_of_range": (FaultPlan(out_of_range=1.0), {"failed"}, "out of range"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_class_ends_as_a_score_or_a_recorded_failure(fault, redis_client, pool_dir):
    plan, statuses, reason = FAULTS[fault]
    config = scoring_config(gateway={"max_retries": 4 if fault == "rate_limit" else 1, "timeout_s": 1.0})
    server = start_scorer(ScorerSettings(faults=plan))
    try:
        records = score_shard(session_for(config, redis_client, server.base_url), rows(pool_dir, 0, 8))
    finally:
        server.stop()
    assert {r.status for r in records} == statuses, f"{fault}: {Counter(r.status for r in records)}"
    assert all(reason in r.reason for r in records if r.status == "failed"), f"{fault}: {[r.reason for r in records]}"
    if fault == "rate_limit":
        assert server.stats["rate_limit"] > 0, "429s were injected and retried through"
    if fault in {"malformed_json", "prose", "out_of_range"}:
        assert server.stats["requests"] == 2 * len(records), "an invalid reply is asked once more, then recorded"


def test_mixed_faults_account_for_every_candidate_within_budget(redis_client, pool_dir):
    plan = FaultPlan(
        rate_limit=0.05,
        server_error=0.05,
        hang=0.02,
        malformed_json=0.04,
        prose=0.04,
        hang_s=2,
        retry_after_s=0,
        seed=3,
    )
    config = scoring_config(gateway={"max_retries": 2, "timeout_s": 1.0}, budget={"cap_eur": 0.05})
    server = start_scorer(ScorerSettings(faults=plan))
    try:
        session = session_for(config, redis_client, server.base_url)
        records = score_shard(session, rows(pool_dir, 0, 60))
    finally:
        server.stop()
    assert len({r.id for r in records}) == 60, "every candidate has a record"
    assert all(r.status in {"scored", "cached"} or (r.status == "failed" and r.reason) for r in records), (
        "each is scored, or failed with a reason"
    )
    assert session.ledger.state().spent_eur <= 0.05, "spend stays within the cap"
    paid_cost = sum(to_nano(r.cost_eur) for r in records)
    assert to_nano(session.ledger.state().spent_eur) >= paid_cost, "paid invalid replies are booked too"


def test_retries_and_fallbacks_each_take_an_rpm_slot(redis_client, pool_dir):
    """Half the requests answer 500: every retry and fallback is a request the rpm limit counts."""
    rpm = 300  # one slot every 61 s / 299 ≈ 0.204 s
    config = scoring_config(
        gateway={
            "models": PRIMARY_AND_BACKUP,
            "max_retries": 2,
            "rpm": rpm,
            "concurrency": 8,
        }
    )
    server = start_scorer(ScorerSettings(faults=FaultPlan(server_error=0.5, seed=2)))
    try:
        records = score_shard(session_for(config, redis_client, server.base_url), rows(pool_dir, 0, 12))
    finally:
        server.stop()
    arrivals = sorted(server.arrivals)
    sent = len(arrivals)
    assert sent >= 15 and server.stats["server_error"] >= 4, f"retries were sent: {dict(server.stats)}"
    assert {r.status for r in records} <= {"scored", "cached", "failed"} and len(records) == 12
    interval = slot_interval_s(rpm)
    span = arrivals[-1] - arrivals[0]
    assert span >= (sent - 1) * interval * 0.9, (
        f"{sent} requests, retries included, in {span:.2f} s: the limit allows one per {interval:.3f} s"
    )


def test_a_timed_out_attempt_is_booked_at_its_worst_case(redis_client, pool_dir):
    """The provider finishes (and bills) a request the client gave up on: the ledger must not
    book less than the provider billed, or spend could pass the cap unseen."""
    config = scoring_config(gateway={"max_retries": 1, "timeout_s": 0.5, "reply_deadline_s": 0.5, "concurrency": 8})
    server = start_scorer(ScorerSettings(faults=FaultPlan(hang=0.4, hang_s=1.0, seed=4)))
    try:
        session = session_for(config, redis_client, server.base_url)
        records = score_shard(session, rows(pool_dir, 0, 16))
        assert wait_until(lambda: server.stats["in_flight"] == 0, 10), "the hung requests finished server-side"
    finally:
        server.stop()
    assert server.stats["hang"] >= 4, f"requests hung past the deadline: {dict(server.stats)}"
    billed = session.gateway.cost("reference-vlm", server.stats["prompt_tokens"], server.stats["completion_tokens"])
    spent = session.ledger.state().spent_eur
    assert spent >= billed, f"booked €{spent:.6f}, the provider billed €{billed:.6f}"
    assert to_nano(spent) == sum(to_nano(r.cost_eur) for r in records), "each candidate's record carries its bookings"
    assert session.ledger.state().reserved_eur == 0, "every reservation was settled"
    timed_out = [r for r in records if r.status == "failed"]
    assert all("booked at their worst-case price" in r.reason for r in timed_out), [r.reason for r in timed_out]


def test_rerun_after_kill_9_pays_nothing_for_already_scored_candidates(redis_url, redis_client, pool_dir, tmp_path):
    config_path = write_config(
        tmp_path / "crash.yaml",
        gateway={"concurrency": 4, "max_retries": 0},
        budget={"cap_eur": 5.0},
        scoring={"passes": 1},
    )
    candidates = rows(pool_dir, 0, 80)
    server = start_scorer(ScorerSettings(latency_s=0.2))
    env = worker_env(redis_url, server.base_url)
    try:
        victim = subprocess.Popen(
            worker_command(config_path, pool_dir, 0, 80, tmp_path / "killed.json"), env=env, cwd=ROOT
        )
        deadline = time.monotonic() + 120
        while server.stats["ok"] < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert server.stats["ok"] >= 12, "the worker was killed mid-scoring"

        cache = session_for(scoring_config(), redis_client, server.base_url).caches[("reference-vlm", 0)]
        scored_before = {
            hashlib.sha256(c.image).hexdigest()[:16] for c in candidates if cache.lookup(phash64(c.image)) is not None
        }
        calls_before = len(server.answered)
        rerun_args = worker_command(config_path, pool_dir, 0, 80, tmp_path / "rerun.json")
        rerun = subprocess.run(rerun_args, env=env, cwd=ROOT, timeout=240)
        assert rerun.returncode == 0, "the rerun completes"
    finally:
        server.stop()
    repaid = {digest for digest, _ in server.answered[calls_before:]} & scored_before
    assert scored_before, "some candidates were scored before the kill"
    assert not repaid, f"{len(repaid)} already-scored candidates were paid again"
    final = json.loads((tmp_path / "rerun.json").read_text())
    assert {r["status"] for r in final} <= {"scored", "cached"} and len(final) == 80, "the rerun finishes the shard"
    assert namespace(load_template("difficulty-v1", PROMPTS_DIR), "reference-vlm", 0) in cache.namespace_prefix, (
        "namespace layout"
    )


def test_a_retried_reservation_and_settlement_book_once(redis_client):
    # given a reservation and its settlement each sent twice with one token (replies lost to a Redis restart)
    ledger = BudgetLedger(redis_client, "token-key", cap_eur=1.0, alert_fraction=0.8)
    assert ledger.reserve(0.01, "t-1") is Reservation.GRANTED, "reservation granted"
    assert ledger.reserve(0.01, "t-1") is Reservation.GRANTED, "the retry finds it granted"
    assert ledger.state().reserved_eur == 0.01, f"reserved once: {ledger.state()}"
    ledger.settle("t-1", 0.004)
    ledger.settle("t-1", 0.004)
    # then the cost and the release are booked once; a new token books a new settlement
    state = ledger.state()
    assert (state.spent_eur, state.reserved_eur, state.calls) == (0.004, 0.0, 1), f"booked once: {state}"
    assert ledger.reserve(0.01, "t-2") is Reservation.GRANTED, "second reservation"
    ledger.settle("t-2", 0.002)
    assert ledger.state().calls == 2 and abs(ledger.state().spent_eur - 0.006) < 1e-12, "t-2 is a new settlement"


def test_an_attempt_stopped_before_it_was_sent_frees_its_reservation_and_is_not_a_call(redis_client):
    # given a reserved attempt that never left the process (a stop, or Redis lost taking its rpm slot)
    ledger = BudgetLedger(redis_client, "unsent-key", cap_eur=1.0, alert_fraction=0.8)
    assert ledger.reserve(0.01, "u-1") is Reservation.GRANTED, "reservation granted"
    # when it is settled as unsent
    ledger.settle("u-1", 0.0, sent=False)
    # then its room is free again and the ledger counts no call
    state = ledger.state()
    assert (state.spent_eur, state.reserved_eur, state.calls) == (0.0, 0.0, 0), f"nothing booked: {state}"


def test_a_dead_process_reservations_expire_and_free_the_budget(redis_client, scorer, pool_dir):
    # given a process that reserved most of a small cap and died before settling
    config = scoring_config(budget={"cap_eur": 0.002})
    dead = BudgetLedger(redis_client, "test-key", cap_eur=0.002, alert_fraction=0.8, lease_s=1.0)
    assert dead.reserve(0.0019, "died-mid-call") is Reservation.GRANTED
    # when a new run scores candidates whose calls fit only once that reservation is gone
    started = time.monotonic()
    records = score_shard(session_for(config, redis_client, scorer.base_url), rows(pool_dir, 0, 5))
    # then it waits out the lease instead of hanging, and the ledger is exact again
    assert {r.status for r in records} <= {"scored", "cached"}, (
        f"scored after the lease: {Counter(r.status for r in records)}"
    )
    assert time.monotonic() - started >= 0.5, "it did wait for the dead reservation"
    state = dead.state()
    assert state.reserved_eur == 0.0 and state.spent_eur <= 0.002, f"expired lease released: {state}"
    assert int(redis_client.hget(dead.key, "expired_leases")) == 1, "the expiry is recorded on the ledger"


def test_shards_scored_at_once_share_the_concurrency_bound(redis_client, pool_dir):
    # given two shards scored at once from two threads, as the flow's task runner does,
    # against a scorer that holds every reply for 100 ms
    config = scoring_config(gateway={"concurrency": 4})
    server = start_scorer(ScorerSettings(latency_s=0.1))
    shards = [rows(pool_dir, 0, 40), rows(pool_dir, 100, 40)]
    try:
        sessions = [session_for(config, redis_client, server.base_url) for _ in shards]
        results: list = [None, None]

        def score(index: int) -> None:
            results[index] = score_shard(sessions[index], shards[index])

        threads = [threading.Thread(target=score, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    # then the gateway never sees more than gateway.concurrency calls at once, and sees that many
    assert all(len(r) == 40 for r in results), "both shards finished"
    assert server.stats["requests"] > 8, f"enough calls to fill the slots: {server.stats['requests']}"
    assert server.stats["peak_in_flight"] == 4, f"peak in flight {server.stats['peak_in_flight']}, bound 4"


class _HeldReservations(BudgetLedger):
    """The real ledger, counting reservations held at once."""

    held: int
    peak: int

    def reserve(self, worst_case_eur: float, token: str) -> Reservation:
        reservation = super().reserve(worst_case_eur, token)
        if reservation is Reservation.GRANTED:
            self.held += 1
            self.peak = max(self.peak, self.held)
        return reservation

    def settle(self, token: str, actual_eur: float, sent: bool = True):
        self.held -= 1
        return super().settle(token, actual_eur, sent)


def test_calls_wait_at_the_wire_with_their_request_built_within_twice_the_concurrency(redis_client, distinct_pool):
    # given a scorer that holds every reply for 100 ms, gateway.concurrency 4 and 40 distinct candidates
    config = scoring_config(gateway={"concurrency": 4})
    server = start_scorer(ScorerSettings(latency_s=0.1))
    try:
        session = session_for(config, redis_client, server.base_url)
        session.ledger.__class__ = _HeldReservations
        session.ledger.held = session.ledger.peak = 0
        # when the shard is scored
        records = score_shard(session, rows(distinct_pool, 0, 40))
    finally:
        server.stop()
    # then the gateway sees at most 4 at once, while more calls hold a reservation, ready to send,
    # but never more than twice the concurrency: the budget held back stays close to what is sent
    assert [r.status for r in records] == ["scored"] * 40, "every candidate scored"
    assert server.stats["peak_in_flight"] == 4, f"peak in flight {server.stats['peak_in_flight']}, bound 4"
    assert 4 < session.ledger.peak <= 8, f"{session.ledger.peak} reservations held at once, expected 5..8"
    assert session.ledger.held == 0, "every reservation settled"
