"""Scoring figures, with 1 and 2 scoring processes on one Redis: throughput vs its bound,
the cache-hit path and the look-up latency, the burst hit rate, and the latency a LiteLLM
proxy in the path adds.

    .venv/bin/python bench/scoring.py                # ≥ 5,000 candidates at 200 ms latency
    .venv/bin/python bench/scoring.py --n 1000       # quicker look
    .venv/bin/python bench/scoring.py --client-only  # (e) alone
    .venv/bin/python bench/scoring.py --hits-only    # (b) alone, after the ceiling row that fills the cache

Each (a) and (b) row runs in worker processes started for it (1 or 2), each scoring an equal,
disjoint share of the candidates with `score_shard`, shards of 512 two at a time as in the
release cycle, after all of them are ready (litellm imported, session open). They share one
Redis, so the rpm limit, the budget ledger and the cache are global; each keeps its own event
loop and `gateway.concurrency` bound, exactly as a `scoring.runner: dask` worker process does
(flows/scoring.py). Plain processes rather than the Dask runner itself: a Dask run adds
Prefect's server and task-run overhead, the cluster's start and Dask's shard placement to the
wall time, none of which is what these rows measure. A local Dask worker runs two shards at a
time too (threads_per_worker=2); the "1 shard at a time" rows measure what one would cost.

(a) cache-miss throughput ÷ its bound, against the reference scorer in its own process at
    200 ms latency, distinct images. The bound is min(processes × concurrency / latency, rpm
    limit): the rpm limit is global, the concurrency bound per process. The busiest 60 s
    window of sends, over every process, must not exceed the rpm limit. Rows: rpm 3,000 in 1
    and 2 processes; the concurrency bound of 8 calls in flight in 1 process, and the same
    bound as 2 processes × 4 (goal: ≥ 0.95 of it; were one process short of its bound for
    want of client CPU, two would close the gap); 2 × 8 (the bound doubles, and so does the
    CPU it takes); 2 × 4 one shard at a time per process (one thread per Dask worker); and 1
    process at 64 in flight with no rpm limit, whose throughput is one process's ceiling on
    this machine and sizes a scale-out. Each row also gives the scoring processes' CPU per
    call and a paid call's mean latency as the client saw it (the scorer answers 200 ms after
    a request arrives, its own image work included): concurrency ÷ that latency is all the
    slots can carry. Beside each ratio, the rate from the first send to the last over the
    bound: a run of 2,000 calls lasts under a minute, and litellm's first call (~1 s of imports
    per process) weighs on it as it would not on a release's 80k frames.
(b) cache-hit path: candidates/s through score_shard when every look-up hits (pHash
    included), with 1 and 2 processes (goal ≥ 1.7× from 1 to 2), two shards at a time per
    process and one, and two at a time with each process held to a core of its own; the CPU
    per candidate and how many cores the scoring processes kept busy (the cache server's
    share is not counted: on 2 cores two processes and the server fill the machine). Then
    ScoreCache.lookup p50/p99 (single look-ups, 5,000 entries) against the embedded Valkey
    and against the Redis server at BENCH_REDIS_URL (default redis://127.0.0.1:6379/12, when
    it answers; the bench writes a namespace of its own there and deletes it). Goal: p99 < 2
    ms on both.
(c) cache hit rate on a demo-like pool with production-line bursts, beside the ideal rate
    (the share of frames that are not the first of their burst).
(d) gateway in the path: the same cache-miss calls at the same concurrency, straight to the
    reference scorer and through the LiteLLM proxy in front of it (its own environment,
    .venv-gateway, built when missing); per-call latency as the client sees it, and what the
    proxy adds. Both share the machine's cores with the client, as a proxy beside it would.
(e) the client's own cost: the (a) calls at concurrency 8 in one process, as a bare HTTP POST and
    through tailcal's GatewayClient (litellm's acompletion), each as a share of the bound.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import os
import queue
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.pop("REDIS_URL", None)

import numpy as np
import pyarrow.dataset as ds
import redis

from tasks.config import RuntimeEnv, ScoringSetup, SyntheticConfig, TailcalConfig
from tasks.scoring.cache import ScoreCache, phash64
from tasks.scoring.passes import open_session, score_shard
from tasks.scoring.prompts import load_template
from tasks.scoring.ratelimit import RateLimiter
from tasks.scoring.results import summarize
from tasks.services import offline_environment, redis_service
from tasks.synth.write import write_pool
from tasks.testing.litellm_proxy import LiteLLMProxy

SHARD = 512
SHARDS_AT_ONCE = 2  # the release cycle's ThreadPoolTaskRunner(max_workers=2)
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


@dataclass
class Row:
    id: str
    image: bytes


def load_rows(pool_dir: Path) -> list[Row]:
    table = ds.dataset(pool_dir, format="parquet").to_table(columns=["id", "image"])
    return [Row(i, b) for i, b in zip(table.column("id").to_pylist(), table.column("image").to_pylist(), strict=True)]


def setup(concurrency: int, rpm: int | None, passes: int) -> ScoringSetup:
    return TailcalConfig.model_validate(
        {
            "gateway": {
                "url": "embedded",
                "concurrency": concurrency,
                "rpm": rpm,
                "max_retries": 1,
                "models": [{"name": "reference-vlm", "input_eur_per_mtok": 0.14, "output_eur_per_mtok": 0.55}],
            },
            "budget": {"cap_eur": 100.0},
            "scoring": {"passes": passes},
        }
    ).scoring_setup


def template():
    return load_template("difficulty-v1", Path(__file__).resolve().parents[1] / "configs" / "prompts")


def goal(text: str, met: bool) -> str:
    return f"goal {text}: {'met' if met else 'NOT met'}"


class RecordingLimiter(RateLimiter):
    """Records when each call was let through (time.monotonic, one clock for every process on
    the machine), to check the rpm limit from the outside."""

    sends: list[float]

    async def acquire(self, *args, **kwargs) -> None:
        await super().acquire(*args, **kwargs)
        self.sends.append(time.monotonic())


def start_scorer(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "reference-scorer", "--port", "0", "--latency-s", str(latency)],
        cwd=Path(__file__).resolve().parents[1],
        env=offline_environment(),
        stderr=subprocess.PIPE,
        text=True,
    )
    line = ""
    while "listening on" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError("the reference scorer exited before it listened")
    return proc, line.strip().rsplit(" ", 1)[-1]


def run_shards(session, rows: list, shards_at_once: int = SHARDS_AT_ONCE) -> tuple[list, float]:
    """Shards of SHARD candidates, `shards_at_once` at a time from as many threads, as the
    flow's task runner runs them. One session serves them all (the flow opens one per shard);
    either way the shards share the process's gateway.concurrency bound and the Redis rpm limit."""
    start = time.perf_counter()
    shards = [rows[offset : offset + SHARD] for offset in range(0, len(rows), SHARD)]
    with ThreadPoolExecutor(max_workers=shards_at_once) as pool:
        records = [record for shard in pool.map(partial(score_shard, session), shards) for record in shard]
    return records, time.perf_counter() - start


@dataclass(frozen=True)
class Load:
    """What every worker process of one row scores, and against what."""

    pool_dir: Path
    redis_url: str
    api_base: str
    concurrency: int
    rpm: int | None
    shards_at_once: int = SHARDS_AT_ONCE
    pinned: bool = False  # worker process i runs on core i alone, as on a machine of its own


@dataclass
class Share:
    """One worker process's outcome: its records' statuses, its sends, when it started and ended."""

    statuses: Counter
    sends: list[float]
    start: float
    end: float
    cpu_s: float  # the process's CPU time while scoring, every thread
    latency_s: float  # paid calls' latency as the client saw it, summed


def score_share(load: Load, first: int, stop: int, core: int | None, ready, results) -> None:
    """A worker process: open a session, wait for every other worker, score rows [first, stop),
    on core `core` alone when one is given."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    rows = load_rows(load.pool_dir)[first:stop]
    client = redis.Redis.from_url(load.redis_url)
    session = open_session(setup(load.concurrency, load.rpm, 1), client, load.api_base, "bench", template())
    limiter = RecordingLimiter(client, "bench", load.rpm)
    limiter.sends = []
    session.limiter = limiter
    ready.wait(timeout=600)
    start, cpu = time.monotonic(), time.process_time()
    records, _ = run_shards(session, rows, load.shards_at_once)
    statuses, latency_s = Counter(r.status for r in records), sum(r.latency_s for r in records if r.status == "scored")
    results.put(Share(statuses, limiter.sends, start, time.monotonic(), time.process_time() - cpu, latency_s))


@dataclass(frozen=True)
class Outcome:
    """A row over all its processes: statuses, every send in time order, wall time from the
    start signal, the scoring processes' CPU time together, and the paid calls' mean latency
    as the client saw it."""

    statuses: Counter
    sends: np.ndarray
    wall_s: float
    cpu_s: float
    call_s: float

    def busiest_minute(self) -> int:
        sends = self.sends
        return max(int(np.searchsorted(sends, t + 60) - i) for i, t in enumerate(sends)) if len(sends) else 0


def in_processes(load: Load, rows: int, processes: int) -> Outcome:
    """Score `rows` candidates of the pool in `processes` worker processes, equal disjoint shares."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(processes + 1), context.Queue()
    edges = np.linspace(0, rows, processes + 1).astype(int)
    cores = sorted(os.sched_getaffinity(0)) if load.pinned else [None] * processes
    workers = [
        context.Process(target=score_share, args=(load, int(a), int(b), core, ready, results))
        for core, (a, b) in zip(cores, itertools.pairwise(edges), strict=False)
    ]
    for worker in workers:
        worker.start()
    try:
        ready.wait(timeout=600)
        go = time.monotonic()
        shares: list[Share] = []
        while len(shares) < processes:
            try:
                shares.append(results.get(timeout=5))
            except queue.Empty:
                failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"a bench worker process exited with {failed[0]}") from None
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    statuses = sum((share.statuses for share in shares), Counter())
    sends = np.sort(np.concatenate([np.array(share.sends) for share in shares]))
    wall_s, cpu_s = max(share.end for share in shares) - go, sum(share.cpu_s for share in shares)
    call_s = sum(share.latency_s for share in shares) / max(1, statuses["scored"])
    return Outcome(statuses, sends, wall_s, cpu_s, call_s)


def processes_label(processes: int, shards_at_once: int = SHARDS_AT_ONCE, pinned: bool = False) -> str:
    at_once = "" if shards_at_once == SHARDS_AT_ONCE else f", {shards_at_once} shard at a time"
    cores = ", each on a core of its own" if pinned else ""
    return f"{processes} process{'es' if processes > 1 else ''}{at_once}{cores}"


def throughput(load: Load, rows: int, latency: float, processes: int = 1) -> float:
    """One (a) row: score `rows` distinct candidates; print and return the ratio to the bound."""
    outcome = in_processes(load, rows, processes)
    paid, rpm = outcome.statuses["scored"], load.rpm
    bound = min(processes * load.concurrency / latency, rpm / 60 if rpm else float("inf"))
    ratio = paid / outcome.wall_s / bound
    sends = outcome.sends
    # Without the start (litellm's first call imports for ~1 s per process, the first shard is
    # hashed) and the last replies: the rate a long run settles at.
    steady = (len(sends) - 1) / (sends[-1] - sends[0]) / bound if len(sends) > 1 else float("nan")
    print(
        f"  {processes_label(processes, load.shards_at_once)}, concurrency {load.concurrency} each, rpm {rpm or '-'}:"
        f" {paid} calls in {outcome.wall_s:.1f} s = {paid / outcome.wall_s:.1f}/s; bound {bound:.1f}/s;"
        f" ratio {ratio:.3f} (first to last send {steady:.3f}); client CPU {outcome.cpu_s * 1000 / paid:.1f} ms/call;"
        f" a call took {outcome.call_s * 1000:.0f} ms as the client saw it"
        + (f"; busiest 60 s window {outcome.busiest_minute()} sends (limit {rpm})" if rpm else "")
    )
    return ratio


def lookup_timings(client: redis.Redis, hashes: list[int]) -> np.ndarray:
    """ScoreCache.lookup times (ms), one hash at a time, over a namespace of its own holding
    `hashes`; the namespace is deleted afterwards."""
    cache = ScoreCache(client, f"bench-{uuid.uuid4().hex[:8]}:reference-vlm:p0", max_distance=5, ttl_s=3600)
    try:
        for value in hashes:
            cache.store(value, 0.5, ("low_light",), "reference-vlm")
        timings = []
        for value in hashes:
            start = time.perf_counter()
            cache.lookup(value)
            timings.append(time.perf_counter() - start)
    finally:
        keys = list(client.scan_iter(match=f"{cache.namespace_prefix}:*", count=1000))
        for offset in range(0, len(keys), 1000):
            client.delete(*keys[offset : offset + 1000])
    return np.array(timings) * 1000


def cache_hit_path(service, load: Load, rows: list[Row]) -> None:
    """(b): every candidate already cached (the ceiling row filled `service`): score them again
    in 1 and in 2 processes, two shards at a time per process and one; then two shards at a
    time with each process held to a core of its own (1 process on core 0; 2 on cores 0 and 1),
    as on machines of their own: one unpinned process already keeps more than one of this
    machine's cores busy, so the unpinned rows cannot double on 2 cores whatever the design."""
    layouts = [(SHARDS_AT_ONCE, False), (1, False)]
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
        layouts.append((SHARDS_AT_ONCE, True))
    for shards_at_once, pinned in layouts:
        rates = {}
        for processes in (1, 2):
            outcome = in_processes(replace(load, shards_at_once=shards_at_once, pinned=pinned), len(rows), processes)
            rates[processes] = len(rows) / outcome.wall_s
            print(
                f"(b) cache-hit path, {processes_label(processes, shards_at_once, pinned)}:"
                f" {outcome.statuses['cached']}/{len(rows)} hits,"
                f" {rates[processes]:.0f} candidates/s (pHash + look-up), CPU {outcome.cpu_s * 1000 / len(rows):.2f}"
                f" ms/candidate, {outcome.cpu_s / outcome.wall_s:.2f} cores busy"
            )
        scaling = rates[2] / rates[1]
        print(f"    1 → 2 processes: ×{scaling:.2f}; {goal('≥ 1.7×', scaling >= 1.7)}")
    hashes = [phash64(r.image) for r in rows]
    backends = [("embedded Valkey", service.client)]
    server = redis.Redis.from_url(BENCH_REDIS_URL)
    try:
        server.ping()
        backends.append((f"Redis server {BENCH_REDIS_URL}", server))
    except redis.RedisError as exc:
        print(f"    look-up against {BENCH_REDIS_URL}: skipped, it does not answer ({exc.__class__.__name__})")
    for name, client in backends:
        p50, p99 = np.percentile(lookup_timings(client, hashes), [50, 99])
        print(
            f"    ScoreCache.lookup on {name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms over {len(hashes)} entries;"
            f" {goal('p99 < 2 ms', p99 < 2.0)}"
        )
    server.close()


def call_latencies(work: Path, name: str, rows: list[Row], api_base: str, concurrency: int) -> tuple[np.ndarray, float]:
    """Per-call latency (ms) of every paid call scoring `rows` through `api_base`, and the wall time."""
    with redis_service(RuntimeEnv(), work / f"valkey-gateway-{name}-{concurrency}") as service:
        session = open_session(setup(concurrency, None, 1), service.client, api_base, "bench-master-key", template())
        records, wall = run_shards(session, rows)
    return np.array([r.latency_s for r in records if r.status == "scored"]) * 1000, wall


def gateway_in_the_path(work: Path, rows: list[Row], api_base: str, latency: float) -> None:
    """(d): the same calls straight to the scorer and through the LiteLLM proxy, one load at a time."""
    with LiteLLMProxy({"reference-vlm": api_base}, "bench-master-key", work / "litellm-proxy") as proxy:
        print(
            f"(d) gateway in the path: LiteLLM proxy answered {proxy.start_s:.1f} s after start;"
            f" scorer latency {latency * 1000:.0f} ms"
        )
        for concurrency, calls in ((1, rows[:100]), (8, rows)):
            figures = {}
            for name, base in (("direct", api_base), ("proxy", proxy.base_url)):
                cpu_before = proxy.cpu_s()
                ms, wall = call_latencies(work, name, calls, base, concurrency)
                figures[name] = ms
                p50, p90, p99 = np.percentile(ms, [50, 90, 99])
                proxy_ms = (proxy.cpu_s() - cpu_before) * 1000 / len(ms)
                cpu = f"; proxy CPU {proxy_ms:.1f} ms/call" if name == "proxy" else ""
                print(
                    f"  concurrency {concurrency}, {name:>6}: {len(ms)} calls in {wall:.1f} s = {len(ms) / wall:.1f}/s;"
                    f" latency mean {ms.mean():.1f} ms, p50 {p50:.1f}, p90 {p90:.1f}, p99 {p99:.1f}{cpu}"
                )
            direct, proxied = figures["direct"], figures["proxy"]
            added = {q: np.percentile(proxied, q) - np.percentile(direct, q) for q in (50, 99)}
            print(
                f"  concurrency {concurrency}: the proxy adds {proxied.mean() - direct.mean():.1f} ms per call"
                f" on average (p50 {added[50]:+.1f} ms, p99 {added[99]:+.1f} ms)"
            )


def client_cost(rows: list[Row], api_base: str, latency: float, concurrency: int = 8) -> None:
    """(e): what the client itself costs per call. The same calls at the same concurrency, one
    process, no cache or ledger: a bare HTTP POST (httpx, the floor any client pays) and
    tailcal's GatewayClient (litellm: request and reply handling, cost). Their ratios to the
    concurrency bound show how much of (a)'s shortfall is the litellm client."""
    import asyncio
    import statistics

    import httpx

    from tasks.scoring.gateway import GatewayClient, prepare_image

    config = setup(concurrency, None, 1)
    prompt = template()
    images = [prepare_image(r.image, config.gateway.max_image_side) for r in rows]
    bound = concurrency / latency

    async def bare(client: httpx.AsyncClient, image) -> None:
        content = [{"type": "text", "text": prompt.user}, {"type": "image_url", "image_url": {"url": image.data_uri}}]
        body = {"model": "reference-vlm", "messages": [{"role": "user", "content": content}], "seed": 0}
        response = await client.post(f"{api_base}/chat/completions", json=body, headers={"Authorization": "Bearer b"})
        response.raise_for_status()
        response.json()

    async def run(name: str) -> None:
        slots, latencies = asyncio.Semaphore(concurrency), []
        async with httpx.AsyncClient(timeout=60) as http:
            gateway = GatewayClient(config.gateway, api_base, "bench", prompt)
            model = config.gateway.models[0].name

            async def one(image) -> None:
                async with slots:
                    start = time.perf_counter()
                    if name == "bare HTTP":
                        await bare(http, image)
                    else:
                        await gateway.score(image, model, 0, 0.7)
                    latencies.append(time.perf_counter() - start)

            await asyncio.gather(*(one(image) for image in images[:16]))  # connections, imports
            latencies.clear()
            cpu, start = time.process_time(), time.perf_counter()
            await asyncio.gather(*(one(image) for image in images))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rate = len(images) / wall
        print(
            f"  {name:>22}: {rate:.1f}/s = {rate / bound:.3f} of the bound {bound:.0f}/s; latency p50"
            f" {statistics.median(latencies) * 1000:.1f} ms; client CPU {cpu / len(images) * 1000:.1f} ms/call"
        )

    print(f"(e) the client's own cost, {len(images)} calls at concurrency {concurrency}, one process:")
    for name in ("bare HTTP", "GatewayClient (litellm)"):
        asyncio.run(run(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="distinct candidates for (a) and (b)")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--gateway-n", type=int, default=1000, help="distinct candidates for (d); 0 skips it")
    parser.add_argument("--gateway-only", action="store_true", help="run (d) alone")
    parser.add_argument("--client-only", action="store_true", help="run (e) alone")
    # The ceiling row runs first: it fills the cache (b) reads.
    parser.add_argument("--hits-only", action="store_true", help="run (b) alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tailcal-bench-") as tmp:
        work = Path(tmp)
        write_pool(SyntheticConfig(seed=21, burst_probability=0.0), work / "distinct", n=args.n, workers=2)
        write_pool(SyntheticConfig(seed=22), work / "bursty", n=2000, workers=2)
        distinct, bursty = load_rows(work / "distinct"), load_rows(work / "bursty")
        proc, api_base = start_scorer(args.latency)
        try:
            if args.client_only:
                client_cost(distinct[:800], api_base, args.latency)
                return
            if args.gateway_only:
                gateway_in_the_path(work, distinct[: args.gateway_n], api_base, args.latency)
                return
            print(
                f"(a) throughput, cache-miss path, {len(distinct)} distinct candidates,"
                f" latency {args.latency * 1000:.0f} ms"
            )
            pool, n, latency = work / "distinct", len(distinct), args.latency

            def row(concurrency: int, rpm: int | None, processes: int, **kw) -> float:
                with redis_service(RuntimeEnv(), work / f"valkey-{uuid.uuid4().hex[:8]}") as service:
                    return throughput(Load(pool, service.url, api_base, concurrency, rpm, **kw), n, latency, processes)

            if not args.hits_only:
                for processes in (1, 2):
                    row(concurrency=32, rpm=3000, processes=processes)
                row(concurrency=8, rpm=None, processes=1)
                same_bound = row(concurrency=4, rpm=None, processes=2)
                print(f"  the same bound in 2 processes: {goal('≥ 0.95 of the bound', same_bound >= 0.95)}")
                row(concurrency=8, rpm=None, processes=2)
                row(concurrency=4, rpm=None, processes=2, shards_at_once=1)
            with redis_service(RuntimeEnv(), work / "valkey-hits") as service:
                load = Load(pool, service.url, api_base, 64, None)
                ceiling = throughput(load, n, latency) * 64 / latency  # also fills the cache for (b)
                print(
                    f"  one process's ceiling (its client CPU, this machine): {ceiling:.0f} calls/s ="
                    f" {ceiling * 60:.0f} rpm; processes to saturate an rpm limit: "
                    + ", ".join(f"{rpm} → {math.ceil(rpm / 60 / ceiling)}" for rpm in (600, 3000, 6000, 12000, 30000))
                )
                cache_hit_path(service, load, distinct)
            if args.hits_only:
                return

            with redis_service(RuntimeEnv(), work / "valkey-bursty") as service:
                session = open_session(setup(32, None, 2), service.client, api_base, "bench", template())
                records, _ = run_shards(session, bursty)
            summary = summarize(records, passes=2)
            table = ds.dataset(work / "bursty", format="parquet").to_table(columns=["scene_id"])
            ideal = 1 - len(set(table.column("scene_id").to_pylist())) / table.num_rows
            print(
                f"(c) burst pool, 2000 candidates × 2 passes: hit rate {summary.cache_hit_rate:.3f}"
                f" (ideal {ideal:.3f}: frames that are not the first of their burst);"
                f" {summary.calls} calls, €{summary.spend_eur:.4f}, Spearman(pass 0, pass 1) {summary.spearman:.3f}"
            )
            client_cost(distinct[:800], api_base, args.latency)
            if args.gateway_n:
                gateway_in_the_path(work, distinct[: args.gateway_n], api_base, args.latency)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
