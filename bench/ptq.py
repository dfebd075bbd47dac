"""PTQ benchmark for one detector family: export, quantize on K images, time FP16 against INT8.

    .venv/bin/python bench/ptq.py --architecture retinanet_resnet50_fpn            # random weights, 800 px
    .venv/bin/python bench/ptq.py --architecture fcos_compact --k 512 \\
        --checkpoint models/demo_detector.pt --eval-dir data/demo/eval             # + mAP and clipping

Prints export time, PTQ wall time at K (goal ≤ 5 min at K=300 for any family), FP16 and INT8
IR throughput and their ratio (goal for the ResNet-50 families: ≥ 1.8× on an AVX2 CPU without
VNNI: `--max-isa AVX2` times that CPU on a newer one). Random weights unless
--checkpoint is given: speed does not depend on the weights' values. For the two-stage (Faster
R-CNN) families it also times, per image, the IR call against the part that stays in PyTorch
(RPN proposal selection and the RoI heads, in float): the INT8 speed-up applies to the IR only.
mAP, its gap and clipping are printed only with a --checkpoint and an --eval-dir.

Calibration images are the first K of --calib-dir (a COCO split; `tailcal train-detector` writes
data/detector-train), else of the --calib-pool Parquet pool (`make demo` writes data/demo/pool),
else K synthetic frames of the demo benchmark generated here; each is letterboxed to the input
size by the IR's own preprocessing. Never the eval split.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def calibration_images(calib_dir: Path, calib_pool: Path, k: int) -> tuple[list[bytes], str]:
    """K encoded images and where they came from."""
    if (calib_dir / "annotations.json").exists():
        records = json.loads((calib_dir / "annotations.json").read_text())["images"][:k]
        return [(calib_dir / "images" / r["file_name"]).read_bytes() for r in records], f"first {k} of {calib_dir}"
    if calib_pool.exists():
        import pyarrow.dataset as ds

        table = ds.dataset(calib_pool, format="parquet").head(k, columns=["image"])
        return table.column("image").to_pylist(), f"first {table.num_rows} of {calib_pool}"
    from tasks.config import SyntheticConfig
    from tasks.synth.write import iter_frames

    config = SyntheticConfig()
    frames = [frame.jpeg for _, _, frame in iter_frames(config, "train", k, bursts=False, workers=2)]
    return frames, f"{k} synthetic {config.image_size}-px frames (seed {config.seed}; no {calib_dir} or {calib_pool})"


def split_latency(ir_path: Path, image: np.ndarray, iterations: int) -> tuple[float, float]:
    """Median ms per image of the IR call (LATENCY hint, batch 1) and of the decoder on its outputs.

    For a two-stage family the decoder is the part that stays in PyTorch: RPN proposal
    selection (anchors, box decoding, NMS) and the RoI heads (RoIAlign, box head, predictor).
    Each part is timed in its own loop: interleaved, PyTorch's OpenMP threads still spinning
    after a decode slow the next IR call down, and the split would blame the IR for it."""
    from tasks.detection.runtime import load_detector

    detector = load_detector(ir_path, "LATENCY")
    request = detector.compiled.create_infer_request()
    batch = detector.preprocessing.batch([image])[0]
    decoder = detector.adapter.decoder

    def timed(call) -> float:
        call()  # warm-up
        times = []
        for _ in range(iterations):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1e3)
        return float(np.median(times))

    ir_ms = timed(lambda: request.infer(batch))
    outputs = [np.copy(request.get_tensor(output).data) for output in detector.compiled.outputs]
    return ir_ms, timed(lambda: decoder.decode(outputs))


# oneDNN's names for the instruction-set caps ONEDNN_MAX_CPU_ISA takes (x86-64).
ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_AMX")


def say(line: str) -> None:
    print(line, flush=True)


def machine() -> str:
    """CPU count, the INT8/bf16 instruction sets OpenVINO can use (they decide the INT8 speed-up), load."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = {word for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for word in line.split()}
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    found = " ".join(flag for flag in wanted if flag in flags) or "unknown ISA"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    capped = f", capped at {cap} (ONEDNN_MAX_CPU_ISA: nothing above it is used)" if cap else ""
    return f"{os.cpu_count()} CPUs, {found}{capped}; load average {load} at the end of the run"


def main() -> None:
    from tasks.detection.families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="fcos_compact", choices=list(FAMILIES))
    parser.add_argument("--input-size", type=int, default=None, help="default: the family's standard size")
    parser.add_argument("--num-classes", type=int, default=4, help="object classes (detector.num_classes)")
    parser.add_argument("--checkpoint", default=None, help="state_dict to load; default: random weights")
    parser.add_argument("--k", type=int, default=300, help="calibration images")
    parser.add_argument("--calib-dir", type=Path, default=Path("data/detector-train"), help="COCO split, if present")
    parser.add_argument("--calib-pool", type=Path, default=Path("data/demo/pool"), help="else this pool's Parquet")
    parser.add_argument("--eval-dir", type=Path, default=None, help="COCO eval split: mAP with --checkpoint")
    parser.add_argument("--eval-images", type=int, default=None, help="first N eval images (default: all)")
    parser.add_argument("--preset", default=None, choices=["performance", "mixed"], help="default: the layout's")
    parser.add_argument(
        "--range-estimator", default="MEAN_MINMAX", choices=["MEAN_MINMAX", "MINMAX", "MEAN_QUANTILE", "HISTOGRAM"]
    )
    parser.add_argument("--speed-seconds", type=float, default=10.0, help="FP16 seconds per timing round, about")
    parser.add_argument("--speed-rounds", type=int, default=3, help="alternating FP16/INT8 rounds, best kept")
    parser.add_argument("--clipping-images", type=int, default=64)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument(
        "--max-isa",
        default=None,
        choices=ISAS,
        help="cap the instruction set OpenVINO's oneDNN may use (ONEDNN_MAX_CPU_ISA), e.g. AVX2 to time an AVX2 CPU "
        "without VNNI on a newer one; default: all the CPU has",
    )
    args = parser.parse_args()
    if args.max_isa and os.environ.get("ONEDNN_MAX_CPU_ISA") != args.max_isa:
        # oneDNN reads the cap once, when it first asks what the CPU can do: run again with it set.
        child = subprocess.run([sys.executable, *sys.argv], env=os.environ | {"ONEDNN_MAX_CPU_ISA": args.max_isa})
        if child.returncode < 0:
            sys.exit(
                f"the bench died of {signal.Signals(-child.returncode).name} with the instruction set capped at "
                f"{args.max_isa}: OpenVINO's CPU plugin crashes on some models when capped below what this CPU has "
                "(seen with retinanet_resnet50_fpn_v2 and fcos_resnet50_fpn at AVX2); run without --max-isa"
            )
        sys.exit(child.returncode)
    if args.eval_dir and not (args.eval_dir / "annotations.json").exists():
        sys.exit(f"no eval split at {args.eval_dir}: `make demo` writes data/demo/eval")

    import torch

    from tasks.calibration.quantize import quantize_ir
    from tasks.config import DetectorConfig, QuantizationConfig
    from tasks.detection.export import export_ir
    from tasks.detection.families import adapter_for, build_detector, build_model, family_of, input_size_of
    from tasks.detection.runtime import compare_speed
    from tasks.imaging import decode_rgb

    torch.set_num_threads(os.cpu_count() or 1)  # the PyTorch part of a two-stage family runs beside the IR
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="tailcal-ptq-"))
    family = family_of(args.architecture)
    checkpoint = args.checkpoint or str(out_dir / "random.pt")
    detector = DetectorConfig(
        architecture=args.architecture, num_classes=args.num_classes, input_size=args.input_size, checkpoint=checkpoint
    )
    size = input_size_of(detector)
    if args.checkpoint:
        model = build_detector(detector)
    else:
        torch.manual_seed(0)
        model = build_model(args.architecture, args.num_classes, size)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), checkpoint)  # the two-stage decoder reads its RoI heads from a file
    weights = args.checkpoint or "random weights"
    # Each figure is printed as soon as it is measured: a run stopped part-way keeps what it had.
    say(f"tailcal PTQ bench — {family.name} at {size} px, {args.num_classes} classes, {weights}; IRs in {out_dir}")
    exported = export_ir(model, out_dir, adapter_for(model, detector, size))
    del model
    say(f"  export            {exported.wall_s:6.1f} s")
    calibration, source = calibration_images(args.calib_dir, args.calib_pool, args.k)
    say(f"  calibration       {source}")

    started = time.perf_counter()
    quantization = QuantizationConfig(preset=args.preset, range_estimator=args.range_estimator)
    quantized = quantize_ir(exported.xml_path, calibration, quantization, out_dir)
    ptq_wall = time.perf_counter() - started
    say(
        f"  PTQ               {ptq_wall:6.1f} s  K={quantized.subset_size} subset_size={quantized.subset_size} "
        f"preset={quantized.preset} estimator={args.range_estimator}  (goal ≤ 300 s at K=300)"
    )

    frame = decode_rgb(calibration[0])
    del calibration
    ir_ms, _ = split_latency(exported.xml_path, frame, 2)
    iterations = max(3, min(100, round(args.speed_seconds / 3 / (ir_ms / 1e3))))
    parallel = max(4, min(64, round(args.speed_seconds * 2 / 3 / (ir_ms / 1e3))))
    fp16_xml, int8_xml = exported.xml_path, quantized.int8_ir_path
    speeds = compare_speed([fp16_xml, int8_xml], frame, iterations, parallel, rounds=args.speed_rounds)
    fp_speed, int8_speed = speeds[fp16_xml], speeds[int8_xml]
    ratio = int8_speed.throughput_ips / fp_speed.throughput_ips
    say(f"  FP16 IR           {fp_speed.latency_ms:8.1f} ms  {fp_speed.throughput_ips:7.2f} img/s")
    say(f"  INT8 IR           {int8_speed.latency_ms:8.1f} ms  {int8_speed.throughput_ips:7.2f} img/s")
    say(f"  throughput ratio  {ratio:.2f}×  INT8/FP16 IR  (goal ≥ 1.8× for the ResNet-50 families)")
    say(f"  latency ratio     {fp_speed.latency_ms / int8_speed.latency_ms:.2f}×  FP16/INT8 IR at batch 1")
    say(
        f"  timing            best of {args.speed_rounds} alternating rounds: "
        f"{iterations} batch-1 calls, {parallel} queued"
    )
    share = ""
    if family.two_stage:
        rounds = max(3, min(20, round(args.speed_seconds / (ir_ms / 1e3) / 2)))
        fp_ir, fp_torch = split_latency(fp16_xml, frame, rounds)
        q_ir, q_torch = split_latency(int8_xml, frame, rounds)
        fp_share, q_share = fp_torch / (fp_ir + fp_torch), q_torch / (q_ir + q_torch)
        say(f"  PyTorch part      RPN proposals + RoI heads in float, {torch.get_num_threads()} torch threads:")
        say(f"    with FP16 IR    {fp_ir:8.1f} ms IR + {fp_torch:7.1f} ms PyTorch = {fp_share:5.1%} of the latency")
        say(f"    with INT8 IR    {q_ir:8.1f} ms IR + {q_torch:7.1f} ms PyTorch = {q_share:5.1%} of the latency")
        end_to_end = (fp_ir + fp_torch) / (q_ir + q_torch)
        say(f"    end to end      {end_to_end:.2f}×  FP16/INT8 batch-1 latency ({rounds} calls each, median)")
        share = f" | {fp_share:.0%} / {q_share:.0%}"
    if args.checkpoint and args.eval_dir:
        print_accuracy(args, fp16_xml, int8_xml)
    elif args.eval_dir:
        say("  mAP               skipped: random weights (pass --checkpoint)")
    say(f"  machine           {machine()}")
    say(
        f"  row               | {family.name} | {size} | {exported.wall_s:.1f} s | {ptq_wall:.1f} s (K={args.k}) | "
        f"{fp_speed.throughput_ips:.2f} | {int8_speed.throughput_ips:.2f} | {ratio:.2f}×{share} |"
    )


def print_accuracy(args, fp16_xml: Path, int8_xml: Path) -> None:
    """FP16 and INT8 mAP on the eval split, per condition and class, and the worst-clipping layers."""
    from tasks.calibration.clipping import activation_clipping
    from tasks.config import EvaluationConfig
    from tasks.detection.runtime import preprocessing_of
    from tasks.evaluation.evaluate import evaluate_ir
    from tasks.evaluation.split import load_eval_split

    split = load_eval_split(args.eval_dir, limit=args.eval_images, num_classes=args.num_classes)
    evaluation = EvaluationConfig()
    fp = evaluate_ir(fp16_xml, split, evaluation, measure_speed=False)
    int8 = evaluate_ir(int8_xml, split, evaluation, measure_speed=False)
    say(f"  FP16 IR mAP       {fp.map:.4f}  mAP@.5 {fp.map50:.4f}  on {fp.images} images of {args.eval_dir}")
    say(f"  INT8 IR mAP       {int8.map:.4f}  mAP@.5 {int8.map50:.4f}")
    say(f"  mAP gap           {fp.map - int8.map:+.4f}  (@.5 {fp.map50 - int8.map50:+.4f})")
    say("  per condition     FP16 → INT8 mAP")
    for condition, value in fp.per_condition.items():
        say(f"    {condition:14s} {value:.4f} → {int8.per_condition[condition]:.4f}")
    say("  per class         FP16 → INT8 mAP")
    for name, value in fp.per_class.items():
        say(f"    {name:14s} {value:.4f} → {int8.per_class[name]:.4f}")
    inputs = preprocessing_of(fp16_xml).inputs(split.head(args.clipping_images).images)
    clipping = activation_clipping(int8_xml, fp16_xml, inputs)
    say(
        f"  clipping          {len(clipping.layers)} activation quantizers, {len(clipping.flagged)} clip > 1 % "
        f"on {clipping.images} eval images; worst:"
    )
    for layer in clipping.layers[:5]:
        say(
            f"    {layer.clipped_fraction * 100:6.2f} %  [{layer.input_low:.3g}, {layer.input_high:.3g}]  "
            f"{layer.producer}"
        )


if __name__ == "__main__":
    main()
