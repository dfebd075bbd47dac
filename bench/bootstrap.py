"""Paired bootstrap benchmark: how long the per-image matching and the resampled mAPs take.

    .venv/bin/python bench/bootstrap.py --images 500 --resamples 1000

Generates a seeded labelled split (`--images` frames, seed 0, as the demo's eval split),
exports the demo detector, quantizes it twice on `--k` frames of a seeded train split
(MEAN_MINMAX and MINMAX) and evaluates FP16 and both INT8 IRs. Prints, per model, the
time to extract its per-image matching and to re-accumulate mAP@[.5:.95] on `--resamples`
resamples, the largest difference between the all-ones re-accumulation and faster-coco-eval,
and the paired interval of the two INT8 models' gap difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--checkpoint", default="models/demo_detector.pt")
    args = parser.parse_args()

    import numpy as np
    import torch

    from tasks.calibration.quantize import quantize_ir
    from tasks.config import DetectorConfig, QuantizationConfig, SyntheticConfig
    from tasks.detection.export import ensure_fp16_ir
    from tasks.detection.runtime import detect, load_detector
    from tasks.evaluation.bootstrap import PairedBootstrap
    from tasks.evaluation.coco import coco_map
    from tasks.evaluation.matches import image_matches, weighted_map
    from tasks.evaluation.split import load_eval_split
    from tasks.synth.write import write_labelled_split

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="tailcal-bench-bootstrap-") as scratch:
        work = Path(scratch)
        write_labelled_split(SyntheticConfig(seed=0), "eval", work / "eval", args.images)
        write_labelled_split(SyntheticConfig(seed=1), "train", work / "calib", args.k)
        split = load_eval_split(work / "eval")
        calibration = load_eval_split(work / "calib").images
        fp16_ir = ensure_fp16_ir(DetectorConfig(checkpoint=args.checkpoint), work / "models")
        irs = {"fp16": fp16_ir}
        for estimator in ("MEAN_MINMAX", "MINMAX"):
            config = QuantizationConfig(range_estimator=estimator)
            irs[f"int8 {estimator}"] = quantize_ir(fp16_ir, calibration, config, work / estimator).int8_ir_path

        matches, maps = {}, {}
        print(f"{len(split)} eval images, {args.resamples} resamples")
        for name, ir in irs.items():
            detector = load_detector(ir)
            by_id = dict(zip(split.image_ids, detect(detector, split.images), strict=True))
            library = coco_map(split.coco, by_id, split.category_ids, breakdown=False).map
            started = time.perf_counter()
            matches[name] = image_matches(split.coco, by_id, split.category_ids)
            matching_s = time.perf_counter() - started
            ones = float(weighted_map(matches[name], np.ones(len(split), np.int64))[0])
            bootstrap = PairedBootstrap(matches["fp16"], args.resamples, seed=0)
            started = time.perf_counter()
            _, maps[name] = bootstrap.resampled_map(matches[name])
            resample_s = time.perf_counter() - started
            print(
                f"  {name:18s} mAP {library:.4f}  |ones − library| {abs(ones - library):.1e}  "
                f"matching {matching_s:.2f} s  {args.resamples} resamples {resample_s:.2f} s "
                f"({len(matches[name].score)} detections)"
            )
        bootstrap = PairedBootstrap(matches["fp16"], args.resamples, seed=0)
        started = time.perf_counter()
        a, b = matches["int8 MEAN_MINMAX"], matches["int8 MINMAX"]
        difference = bootstrap.mean_gap_difference(matches["fp16"], [a], [b])
        print(
            f"gap(MEAN_MINMAX) − gap(MINMAX) = {difference.describe()} "
            f"(paired, three models from scratch in {time.perf_counter() - started:.2f} s)"
        )
        for name in ("int8 MEAN_MINMAX", "int8 MINMAX"):
            print(f"gap of {name}: {bootstrap.gap(matches['fp16'], matches[name]).describe()}")


if __name__ == "__main__":
    main()
