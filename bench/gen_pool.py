"""Write a synthetic candidate pool and print rows/s and peak RSS (memory must stay flat).

.venv/bin/python bench/gen_pool.py --n 80000 --workers 2
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import SyntheticConfig
from tasks.synth.write import write_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=80_000, help="candidates to write")
    parser.add_argument("--workers", type=int, default=2, help="render processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-mode", choices=["inline", "uri"], default="inline")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: a temp dir, removed after)")
    args = parser.parse_args()

    config = SyntheticConfig(seed=args.seed, pool_size=args.n, pool_image_mode=args.image_mode)
    with tempfile.TemporaryDirectory(prefix="tailcal-pool-") as tmp:
        out = args.out or Path(tmp) / "pool"
        start = time.perf_counter()
        stats = write_pool(config, out, workers=args.workers)
        elapsed = time.perf_counter() - start
        size_mib = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"rows            {stats.rows}")
    print(f"scenes          {stats.scenes} (bursts make {stats.rows - stats.scenes} near-duplicate frames)")
    print(f"files           {len(stats.files)} Parquet parts, {size_mib:.0f} MiB")
    print(f"wall            {elapsed:.1f} s with {args.workers} worker(s)")
    print(f"rows/s          {stats.rows / elapsed:.0f}")
    print(f"peak RSS main   {main_rss:.0f} MiB")
    print(f"peak RSS worker {worker_rss:.0f} MiB (largest child)")
    verdict = "PASS" if max(main_rss, worker_rss) < 1024 else "FAIL"
    print(f"goal: each process < 1024 MiB peak RSS -> {verdict}")


if __name__ == "__main__":
    main()
