"""Why MEAN_MINMAX's gap follows the calibration images' activation ranges, not their difficulty.

    .venv/bin/python bench/range_width.py                        # archive seed 11 (configs/claim.yaml's)
    .venv/bin/python bench/range_width.py --data-seed 12 --ks 64

On the realistic claim benchmark (bench/claim.py runs it first: pool generated, scored,
FP16 IR and its evaluation cached), one INT8 model per set and recipe (MEAN_MINMAX, fast bias
correction and none), its gap on the eval split. Sets of K:
- first_n: the pool's first K frames (the users' default);
- widest_ranges: the K frames whose activation ranges reach furthest past the pool's median
  image (`tasks.selection.coverage.range_widths`), as the strategy selects them;
- narrowest: the K frames at the other end of the same ranking (the condition mix of these
  three sets is printed);
- production: K frames drawn from the eval split itself (three draws), i.e. production's own
  condition mix, evaluated in-sample: a set no pool selection can be more representative than.

If representative or hard frames were what MEAN_MINMAX needed, production would lose least;
if range width is, widest_ranges loses least and narrowest most.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

PRODUCTION_DRAWS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-seed", type=int, default=11, help="archive: data.synthetic.seed")
    parser.add_argument("--ks", nargs="+", type=int, default=[64, 300])
    args = parser.parse_args()

    from claim import archive_config

    from tasks.calibration.profiles import profile_pool
    from tasks.calibration.quantize import quantize_ir
    from tasks.config import RuntimeEnv, SelectionConfig, load_config, section_with
    from tasks.detection.export import ensure_fp16_ir
    from tasks.evaluation.evaluate import evaluate_ir, evaluate_ir_cached
    from tasks.evaluation.split import load_eval_split
    from tasks.ingest import IngestReport, collect_images, iter_candidate_batches
    from tasks.selection import SelectionInput, range_widths, select_calibration_set
    from tasks.selection.pool import PoolItem

    config = load_config(archive_config("configs/claim.yaml", args.data_seed))
    if not (config.data.data_dir / "pool").exists():
        sys.exit(f"{config.data.data_dir} holds no pool: run bench/claim.py --data-seeds {args.data_seed} first")
    fp_ir = ensure_fp16_ir(config.detector, config.data.data_dir / "models")
    split = load_eval_split(
        config.evaluation.dataset_dir, num_classes=config.detector.num_classes, label_map=config.evaluation.label_map
    )
    fp16 = evaluate_ir_cached(fp_ir, split, config.evaluation)
    started = time.perf_counter()
    conditions: dict[str, str | None] = {}

    def batches():
        for batch in iter_candidate_batches(config.pool, RuntimeEnv(), IngestReport()):
            conditions.update((candidate.id, candidate.condition) for candidate in batch)
            yield batch

    profiles = profile_pool(fp_ir, batches())
    print(f"archive {args.data_seed}: {len(profiles.ids)} frames profiled in {time.perf_counter() - started:.0f} s")
    # Profiles come in ingest order: each candidate's position in the pool, which first_n reads.
    pool = SelectionInput(tuple(PoolItem(i, position=n) for n, i in enumerate(profiles.ids)))
    by_width = [profiles.ids[row] for row in np.argsort(range_widths(profiles.values), kind="stable")]

    lines = []
    with tempfile.TemporaryDirectory(prefix="tailcal-range-width-") as tmp:
        for k in args.ks:
            chosen = {
                name: select_calibration_set(pool, SelectionConfig(strategy=name, k=k), profiles).ids
                for name in ("first_n", "widest_ranges")
            }
            chosen["narrowest"] = by_width[:k]
            for name, ids in chosen.items():
                mix = Counter(conditions[i] for i in ids).most_common()
                print(f"K={k} {name}: " + ", ".join(f"{n} {condition}" for condition, n in mix))
            # Each set's images read once, for both recipes; production's are K of the eval split's.
            sets = {name: [collect_images(config.pool, RuntimeEnv(), list(ids))] for name, ids in chosen.items()}
            sets["production"] = [
                [split.images[i] for i in np.random.default_rng(seed).choice(len(split), k, replace=False)]
                for seed in range(PRODUCTION_DRAWS)
            ]
            for bias in ("fast", "none"):
                quantization = section_with(
                    config.quantization, "bench/range_width.py", range_estimator="MEAN_MINMAX", bias_correction=bias
                )
                for name, draws in sets.items():
                    gaps = []
                    for n, images in enumerate(draws):
                        int8 = quantize_ir(fp_ir, images, quantization, Path(tmp) / f"{name}-{k}-{bias}-{n}")
                        gaps.append(fp16.map - evaluate_ir(int8.int8_ir_path, split, config.evaluation, False).map)
                    spread = f" ± {statistics.stdev(gaps):.4f} over {len(gaps)} draws" if len(gaps) > 1 else ""
                    lines.append(f"| {k} | {bias} | {name} | {statistics.mean(gaps):+.4f}{spread} |")
                    print(lines[-1], flush=True)
    print(f"\n## archive {args.data_seed}: MEAN_MINMAX gap by calibration set (FP16 mAP {fp16.map:.4f})\n")
    print("| K | bias correction | set | gap |\n|---:|---|---|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
