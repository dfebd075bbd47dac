"""PTQ benchmark: export the demo detector, quantize on K images, compare FP16 and INT8 IRs.

    .venv/bin/python bench/ptq.py --k 512

Prints PTQ wall time (goal ≤ 120 s at K=512), INT8/FP16 throughput (goal ≥ 1.5×), both
mAPs and the gap, and the worst-clipping layers. Calibration images are the first K of
the detector's train split when `tailcal train-detector` made one, else of the demo pool;
never the eval split. `make demo` generates the demo pool and eval split.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def calibration_images(calib_dir: Path, calib_pool: Path, k: int) -> list[bytes]:
    if (calib_dir / "annotations.json").exists():
        records = json.loads((calib_dir / "annotations.json").read_text())["images"][:k]
        return [(calib_dir / "images" / r["file_name"]).read_bytes() for r in records]
    if not calib_pool.exists():
        sys.exit(f"no calibration images: neither {calib_dir}/annotations.json nor {calib_pool}; run `make demo` first")
    import pyarrow.dataset as ds

    table = ds.dataset(calib_pool, format="parquet").head(k, columns=["image"])
    print(f"calibration: first {table.num_rows} images of {calib_pool}")
    return table.column("image").to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--checkpoint", default="models/demo_detector.pt")
    parser.add_argument("--calib-dir", type=Path, default=Path("data/detector-train"), help="COCO split, if present")
    parser.add_argument("--calib-pool", type=Path, default=Path("data/demo/pool"), help="else this pool's Parquet")
    parser.add_argument("--eval-dir", type=Path, default=Path("data/demo/eval"))
    parser.add_argument("--preset", default="performance", choices=["performance", "mixed"])
    parser.add_argument(
        "--range-estimator", default="MEAN_MINMAX", choices=["MEAN_MINMAX", "MINMAX", "MEAN_QUANTILE", "HISTOGRAM"]
    )
    parser.add_argument("--latency-iterations", type=int, default=100)
    parser.add_argument("--speed-rounds", type=int, default=5, help="alternating FP16/INT8 rounds, best kept")
    parser.add_argument("--clipping-images", type=int, default=64)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    if not (args.eval_dir / "annotations.json").exists():
        sys.exit(f"no eval split at {args.eval_dir}: run `make demo` first (it writes data/demo) or pass --eval-dir")

    import torch

    from tasks.calibration.clipping import activation_clipping
    from tasks.calibration.quantize import quantize_ir
    from tasks.config import DetectorConfig, EvaluationConfig, QuantizationConfig
    from tasks.detection.export import export_ir
    from tasks.detection.families import adapter_for, build_detector
    from tasks.detection.runtime import compare_speed
    from tasks.evaluation.evaluate import evaluate_ir
    from tasks.evaluation.split import load_eval_split

    torch.set_num_threads(1)
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="tailcal-ptq-"))
    detector = DetectorConfig(checkpoint=args.checkpoint)
    model = build_detector(detector)
    adapter = adapter_for(model, detector, 192)
    preprocessing = adapter.preprocessing
    exported = export_ir(model, out_dir, adapter)
    calibration = calibration_images(args.calib_dir, args.calib_pool, args.k)

    started = time.perf_counter()
    quantization = QuantizationConfig(preset=args.preset, range_estimator=args.range_estimator)
    quantized = quantize_ir(exported.xml_path, calibration, quantization, out_dir)
    ptq_wall = time.perf_counter() - started

    split = load_eval_split(args.eval_dir, num_classes=DetectorConfig().num_classes)
    evaluation = EvaluationConfig()
    fp = evaluate_ir(exported.xml_path, split, evaluation, measure_speed=False)
    int8 = evaluate_ir(quantized.int8_ir_path, split, evaluation, measure_speed=False)
    speeds = compare_speed(
        [exported.xml_path, quantized.int8_ir_path], split.images[0], args.latency_iterations, rounds=args.speed_rounds
    )
    fp_speed, int8_speed = speeds[exported.xml_path], speeds[quantized.int8_ir_path]
    inputs = preprocessing.inputs(split.head(args.clipping_images).images)
    clipping = activation_clipping(quantized.int8_ir_path, exported.xml_path, inputs)

    ratio = int8_speed.throughput_ips / fp_speed.throughput_ips
    print(f"tailcal PTQ bench — {args.checkpoint}, eval {args.eval_dir} ({fp.images} images), IRs in {out_dir}")
    print(f"  export            {exported.wall_s:6.1f} s")
    print(
        f"  PTQ               {ptq_wall:6.1f} s  K={quantized.subset_size} subset_size={quantized.subset_size} "
        f"preset={args.preset} estimator={args.range_estimator}  (goal ≤ 120 s)"
    )
    print(
        f"  FP16 IR           mAP {fp.map:.4f}  mAP@.5 {fp.map50:.4f}  {fp_speed.latency_ms:5.2f} ms  "
        f"{fp_speed.throughput_ips:6.1f} img/s"
    )
    print(
        f"  INT8 IR           mAP {int8.map:.4f}  mAP@.5 {int8.map50:.4f}  {int8_speed.latency_ms:5.2f} ms  "
        f"{int8_speed.throughput_ips:6.1f} img/s"
    )
    print(f"  mAP gap           {fp.map - int8.map:+.4f}  (@.5 {fp.map50 - int8.map50:+.4f})")
    print(f"  throughput ratio  {ratio:.2f}×  INT8/FP16  (goal ≥ 1.5×)")
    print(f"  latency ratio     {fp_speed.latency_ms / int8_speed.latency_ms:.2f}×  FP16/INT8 at batch 1")
    print("  per condition     FP16 → INT8 mAP")
    for condition, value in fp.per_condition.items():
        print(f"    {condition:14s} {value:.4f} → {int8.per_condition[condition]:.4f}")
    print("  per class         FP16 → INT8 mAP")
    for name, value in fp.per_class.items():
        print(f"    {name:14s} {value:.4f} → {int8.per_class[name]:.4f}")
    print(
        f"  clipping          {len(clipping.layers)} activation quantizers, {len(clipping.flagged)} clip > 1 % "
        f"on {clipping.images} eval images; worst:"
    )
    for layer in clipping.layers[:5]:
        print(
            f"    {layer.clipped_fraction * 100:6.2f} %  [{layer.input_low:.3g}, {layer.input_high:.3g}]  "
            f"{layer.producer}"
        )


if __name__ == "__main__":
    main()
