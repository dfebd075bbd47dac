"""Scan a 10k and an 80k candidate pool with ingest; print rows/s and peak RSS (memory must stay flat).

.venv/bin/python bench/ingest.py                       # generates missing pools under /tmp (~7 min)
.venv/bin/python bench/ingest.py --pool-dir /tmp/p80k  # reuse an existing 80k pool

Each size is scanned in a fresh subprocess, so each peak RSS belongs to one size alone.
Goal: peak RSS at 80k ≤ 1.3 × peak RSS at 10k.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import PoolConfig, RuntimeEnv, SyntheticConfig
from tasks.ingest import IngestReport, iter_candidate_batches
from tasks.synth.write import write_pool

WORK_DIR = Path("/tmp/tailcal-ingest-bench")
RSS_GOAL = 1.3


def ensure_pool(pool_dir: Path | None, n: int, seed: int) -> Path:
    """A pool given on the command line is used as is; the default one is generated once.

    A marker beside the default pool is written last, so an interrupted generation is redone.
    """
    if pool_dir is not None:
        if not any(pool_dir.glob("*.parquet")):
            sys.exit(f"{pool_dir} holds no *.parquet files: drop the option to generate a pool")
        return pool_dir
    pool_dir = WORK_DIR / f"pool-{n}"
    marker = pool_dir.with_name(pool_dir.name + ".done")
    if not marker.exists():
        print(f"generating {n} candidates into {pool_dir} (workers=2) …", flush=True)
        start = time.perf_counter()
        write_pool(SyntheticConfig(seed=seed, pool_size=n), pool_dir, workers=2)
        marker.write_text(f"{n}\n")
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return pool_dir


def scan(uri: str, batch_rows: int, fetch_concurrency: int) -> dict:
    """Ingest the whole pool, dropping each batch, as a scoring consumer would."""
    report = IngestReport()
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    pool = PoolConfig(uri=uri, batch_rows=batch_rows, fetch_concurrency=fetch_concurrency)
    image_bytes = 0
    for batch in iter_candidate_batches(pool, RuntimeEnv(), report):
        image_bytes += sum(len(c.image) for c in batch)
    elapsed = time.perf_counter() - start
    return {
        "rows": report.rows_seen,
        "candidates": report.candidates,
        "skipped": len(report.skipped),
        "files": report.files,
        "image_mib": image_bytes / 2**20,
        "seconds": elapsed,
        "rss_after_imports_mib": rss_imports,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pool_digest": report.pool_digest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-dir", type=Path, help=f"an existing 80k pool (default: {WORK_DIR}/pool-80000)")
    parser.add_argument("--small-pool-dir", type=Path, help=f"an existing 10k pool (default: {WORK_DIR}/pool-10000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed for missing pools")
    parser.add_argument("--batch-rows", type=int, default=512)
    parser.add_argument("--fetch-concurrency", type=int, default=16)
    parser.add_argument("--scan", type=str, default=None, help=argparse.SUPPRESS)  # child mode: one URI
    args = parser.parse_args()

    if args.scan:
        print(json.dumps(scan(args.scan, args.batch_rows, args.fetch_concurrency)))
        return

    results = {}
    for n, pool_dir in ((10_000, args.small_pool_dir), (80_000, args.pool_dir)):
        pool_dir = ensure_pool(pool_dir, n, args.seed)
        child = [sys.executable, __file__, "--scan", str(pool_dir), "--batch-rows", str(args.batch_rows)]
        child += ["--fetch-concurrency", str(args.fetch_concurrency)]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        results[n] = json.loads(out.strip().splitlines()[-1])

    print(f"ingest scan, batch_rows={args.batch_rows}, fetch_concurrency={args.fetch_concurrency}, inline images")
    print(
        f"{'pool':>8} {'files':>5} {'rows':>7} {'cands':>7} {'skip':>4} {'MiB img':>8} {'wall s':>7} "
        f"{'rows/s':>7} {'RSS imp':>8} {'peak RSS':>9}"
    )
    for n, r in results.items():
        print(
            f"{n:>8} {r['files']:>5} {r['rows']:>7} {r['candidates']:>7} {r['skipped']:>4} {r['image_mib']:>8.0f} "
            f"{r['seconds']:>7.1f} {r['rows'] / r['seconds']:>7.0f} {r['rss_after_imports_mib']:>6.0f} M "
            f"{r['peak_rss_mib']:>7.0f} M"
        )
    ratio = results[80_000]["peak_rss_mib"] / results[10_000]["peak_rss_mib"]
    verdict = "PASS" if ratio <= RSS_GOAL else "FAIL"
    print(f"peak RSS 80k / 10k = {ratio:.2f} (goal ≤ {RSS_GOAL}) -> {verdict}")


if __name__ == "__main__":
    main()
