"""Scoring figures: throughput vs its bound, the cache-hit path, the burst hit rate, and the
latency a LiteLLM proxy in the path adds.

    .venv/bin/python bench/scoring.py                # ≥ 5,000 candidates at 200 ms latency
    .venv/bin/python bench/scoring.py --n 1000       # quicker look

(a) throughput ÷ min(concurrency / latency, rpm limit), against the reference scorer in its
    own process at 200 ms latency, cache-miss path (distinct images), shards two at a time
    as in the release cycle; the busiest 60 s window of sends must not exceed the rpm limit.
(b) cache-hit path: candidates/s through score_shard when every look-up hits (pHash
    included), and ScoreCache.lookup p50/p99.
(c) cache hit rate on a demo-like pool with production-line bursts, beside the ideal rate
    (the share of frames that are not the first of their burst).
(d) gateway in the path: the same cache-miss calls at the same concurrency, straight to the
    reference scorer and through the LiteLLM proxy in front of it (its own environment,
    .venv-gateway, built when missing); per-call latency as the client sees it, and what the
    proxy adds. Both share the machine's cores with the client, as a proxy beside it would.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.pop("REDIS_URL", None)

import numpy as np
import pyarrow.dataset as ds

from tasks.config import RuntimeEnv, ScoringSetup, SyntheticConfig, TailcalConfig
from tasks.scoring.cache import phash64
from tasks.scoring.passes import open_session, score_shard
from tasks.scoring.prompts import load_template
from tasks.scoring.ratelimit import RateLimiter
from tasks.scoring.results import summarize
from tasks.services import offline_environment, redis_service
from tasks.synth.write import write_pool
from tasks.testing.litellm_proxy import LiteLLMProxy

SHARD = 512
SHARDS_AT_ONCE = 2  # the release cycle's ThreadPoolTaskRunner(max_workers=2)


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


class RecordingLimiter(RateLimiter):
    """Records when each call was let through, to check the rpm limit from the outside."""

    sends: list[float]

    async def acquire(self) -> None:
        await super().acquire()
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


def run_shards(session, rows: list[Row]) -> tuple[list, float]:
    """Shards of SHARD candidates, two at a time from two threads, as the flow's task runner
    runs them. One session serves both (the flow opens one per shard); either way the
    shards share the process's gateway.concurrency bound and the Redis rpm limit."""
    start = time.perf_counter()
    shards = [rows[offset : offset + SHARD] for offset in range(0, len(rows), SHARD)]
    with ThreadPoolExecutor(max_workers=SHARDS_AT_ONCE) as pool:
        records = [record for shard in pool.map(partial(score_shard, session), shards) for record in shard]
    return records, time.perf_counter() - start


def throughput(work: Path, rows: list[Row], api_base: str, concurrency: int, rpm: int | None, latency: float) -> None:
    with redis_service(RuntimeEnv(), work / f"valkey-{concurrency}-{rpm}") as redis:
        session = open_session(setup(concurrency, rpm, 1), redis.client, api_base, "bench", template())
        limiter = RecordingLimiter(redis.client, "bench", rpm)
        limiter.sends = []
        session.limiter = limiter
        records, wall = run_shards(session, rows)
    paid = sum(r.status == "scored" for r in records)
    bound = min(concurrency / latency, rpm / 60 if rpm else float("inf"))
    sends = np.array(limiter.sends)
    busiest = max(int(np.searchsorted(sends, t + 60) - i) for i, t in enumerate(sends)) if len(sends) else 0
    print(
        f"  concurrency {concurrency:3d}, rpm {rpm or '-':>5}: {paid} calls in {wall:.1f} s = {paid / wall:.1f}/s;"
        f" bound {bound:.1f}/s; ratio {paid / wall / bound:.3f}"
        + (f"; busiest 60 s window {busiest} sends (limit {rpm})" if rpm else "")
    )


def call_latencies(work: Path, name: str, rows: list[Row], api_base: str, concurrency: int) -> tuple[np.ndarray, float]:
    """Per-call latency (ms) of every paid call scoring `rows` through `api_base`, and the wall time."""
    with redis_service(RuntimeEnv(), work / f"valkey-gateway-{name}-{concurrency}") as redis:
        session = open_session(setup(concurrency, None, 1), redis.client, api_base, "bench-master-key", template())
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="distinct candidates for (a) and (b)")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--gateway-n", type=int, default=1000, help="distinct candidates for (d); 0 skips it")
    parser.add_argument("--gateway-only", action="store_true", help="run (d) alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tailcal-bench-") as tmp:
        work = Path(tmp)
        write_pool(SyntheticConfig(seed=21, burst_probability=0.0), work / "distinct", n=args.n, workers=2)
        write_pool(SyntheticConfig(seed=22), work / "bursty", n=2000, workers=2)
        distinct, bursty = load_rows(work / "distinct"), load_rows(work / "bursty")
        proc, api_base = start_scorer(args.latency)
        try:
            if args.gateway_only:
                gateway_in_the_path(work, distinct[: args.gateway_n], api_base, args.latency)
                return
            print(
                f"(a) throughput, cache-miss path, {len(distinct)} distinct candidates,"
                f" latency {args.latency * 1000:.0f} ms"
            )
            throughput(work, distinct, api_base, concurrency=32, rpm=3000, latency=args.latency)
            throughput(work, distinct, api_base, concurrency=8, rpm=None, latency=args.latency)

            with redis_service(RuntimeEnv(), work / "valkey-hits") as redis:
                session = open_session(setup(32, None, 1), redis.client, api_base, "bench", template())
                run_shards(session, distinct)  # fill the cache
                records, wall = run_shards(session, distinct)
                hits = sum(r.status == "cached" for r in records)
                cache = session.caches[("reference-vlm", 0)]
                hashes = [phash64(r.image) for r in distinct]
                timings = []
                for value in hashes:
                    start = time.perf_counter()
                    cache.lookup(value)
                    timings.append(time.perf_counter() - start)
            p50, p99 = np.percentile(np.array(timings) * 1000, [50, 99])
            print(
                f"(b) cache-hit path: {hits}/{len(records)} hits, {len(records) / wall:.0f} candidates/s"
                f" (pHash + look-up; goal ≥ 500/s); look-up p50 {p50:.3f} ms, p99 {p99:.3f} ms (goal p99 < 2 ms)"
                f" over {len(hashes)} entries"
            )

            with redis_service(RuntimeEnv(), work / "valkey-bursty") as redis:
                session = open_session(setup(32, None, 2), redis.client, api_base, "bench", template())
                records, _ = run_shards(session, bursty)
            summary = summarize(records, passes=2)
            table = ds.dataset(work / "bursty", format="parquet").to_table(columns=["scene_id"])
            ideal = 1 - len(set(table.column("scene_id").to_pylist())) / table.num_rows
            print(
                f"(c) burst pool, 2000 candidates × 2 passes: hit rate {summary.cache_hit_rate:.3f}"
                f" (ideal {ideal:.3f}: frames that are not the first of their burst);"
                f" {summary.calls} calls, €{summary.spend_eur:.4f}, Spearman(pass 0, pass 1) {summary.spearman:.3f}"
            )
            if args.gateway_n:
                gateway_in_the_path(work, distinct[: args.gateway_n], api_base, args.latency)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
