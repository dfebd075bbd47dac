"""Router benchmark: the service on loopback, all-FP16 vs all-INT8 vs routed, on the eval split's mix.

    .venv/bin/python bench/router.py --images 300 --concurrency 4          # the demo's release IRs
    .venv/bin/python bench/router.py --architecture fcos_resnet50_fpn --input-size 192 \
        --checkpoint data/router/fcos_resnet50_fpn.pt --eval-dir data/detector-eval   # a trained family

Each mode starts the real service (`tailcal serve`) in its own process with
only the tiers it may use, warms it, then sends the first N eval images (the benchmark's
long-tailed condition mix: ~58 % normal, the rest hard conditions) with a bounded number
in flight, and stops after N requests or --max-seconds, whichever first. Prints
throughput, p50/p99 client latency, mAP@[.5:.95] from the served boxes, and the tiers
the router chose. Goal: routed mAP within 0.2 (mAP points) of all-FP16 at ≥ 1.3× its
throughput. The tiers are a release run's IRs (default: the newest
data/demo/mlartifacts/*/artifacts/ir holding both), or, with --architecture and --checkpoint,
IRs built here from a `tailcal train-detector` checkpoint the demo's way: the FP16 IR exported,
then INT8 quantized with the demo's recipe (configs/demo.yaml's range estimator and bias
correction, or --range-estimator / --bias-correction) on a hard_tail_mix selection of K frames of --calib-dir
scored with the difficulty the demo's reference scorer and the router use (`tasks.difficulty`);
they are kept in --out-dir and reused while newer than the checkpoint.

mAP is compared on the images every mode served (a mode stopped by --max-seconds serves fewer).
Then, from the same served answers: the FP16 and INT8 mAP on the frames the router sent to each
tier, what the service spends per request in the IR and in decoding (one frame, batch 1), and
what other `serving.hard_difficulty` thresholds would have given (each frame's INT8 or FP16
answer by its difficulty; throughput estimated from the two tiers' measured req/s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def newest_release_ir_dir(data_dir: Path) -> Path | None:
    candidates = [
        d
        for d in data_dir.glob("mlartifacts/*/artifacts/ir")
        if (d / "detector_int8.xml").exists() and (d / "detector_fp16.xml").exists()
    ]
    return max(candidates, key=lambda d: (d / "detector_int8.xml").stat().st_mtime, default=None)


def start_service(tiers: dict[str, Path], args, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)]
    for name, path in tiers.items():
        command += [f"--{name}-ir", str(path)]
    command += ["--infer-requests", str(args.infer_requests)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.config:
        command += ["--config", args.config]
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(command, cwd=root, env=os.environ | {"PYTHONPATH": str(root)}, stderr=subprocess.PIPE)


async def wait_ready(client, process: subprocess.Popen, timeout_s: float = 90.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("service did not answer /healthz in time")


async def load(base_url: str, bodies: list[bytes], concurrency: int, max_seconds: float, process) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        await wait_ready(client, process)
        for body in bodies[: min(20, len(bodies))]:  # warm the HTTP path too
            (await client.post("/v1/detect", content=body)).raise_for_status()
        results: dict[int, dict] = {}
        latencies: list[float] = []
        tiers: Counter = Counter()
        served_by: dict[int, str] = {}
        difficulty: dict[int, float] = {}
        fallbacks = 0
        next_index = 0
        started = time.perf_counter()
        deadline = started + max_seconds

        async def worker() -> None:
            nonlocal next_index, fallbacks
            while next_index < len(bodies) and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                sent = time.perf_counter()
                response = await client.post("/v1/detect", content=bodies[index])
                latencies.append(time.perf_counter() - sent)
                response.raise_for_status()
                results[index] = response.json()
                tiers[response.headers["X-Tailcal-Tier"]] += 1
                served_by[index] = response.headers["X-Tailcal-Tier"]
                difficulty[index] = float(response.headers["X-Tailcal-Difficulty"])
                fallbacks += "X-Tailcal-Fallback-From" in response.headers

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "results": results,
        "latencies": latencies,
        "wall": wall,
        "tiers": tiers,
        "served_by": served_by,
        "difficulty": difficulty,
        "fallbacks": fallbacks,
    }


def served_map(
    coco: dict, results: dict[int, dict], category_ids: tuple[int, ...], indices: set[int] | None = None
) -> float:
    """mAP@[.5:.95] of the served answers, on `indices` (default: every image answered)."""
    from tasks.detection.postprocess import Detections
    from tasks.evaluation.coco import coco_map

    indices = set(results) if indices is None else indices
    results = {i: results[i] for i in indices}
    subset = dict(coco)
    subset["images"] = [coco["images"][i] for i in sorted(results)]
    kept = {img["id"] for img in subset["images"]}
    subset["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
    detections = {}
    for index, body in results.items():
        dets = body["detections"]
        detections[coco["images"][index]["id"]] = Detections(
            np.array([d["box"] for d in dets], np.float32).reshape(-1, 4),
            np.array([d["score"] for d in dets], np.float32),
            np.array([d["label"] for d in dets], np.int64),
        )
    return coco_map(subset, detections, category_ids, breakdown=False).map


def measure(mode_tiers: dict[str, Path], args, bodies: list[bytes]) -> dict:
    from tasks.loopback import free_port

    port = free_port()
    process = start_service(mode_tiers, args, port)
    try:
        run = asyncio.run(load(f"http://127.0.0.1:{port}", bodies, args.concurrency, args.max_seconds, process))
    finally:
        process.terminate()
        process.wait(timeout=30)
    lat = np.array(run["latencies"]) * 1e3
    return {
        "n": len(run["results"]),
        "ips": len(run["results"]) / run["wall"],
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "tiers": dict(run["tiers"]),
        "fallbacks": run["fallbacks"],
        "results": run["results"],
        "served_by": run["served_by"],
        "difficulty": run["difficulty"],
    }


def say(line: str) -> None:
    print(line, flush=True)


def calibration_selection(calib_dir: Path, pool_size: int, k: int) -> tuple[list[bytes], str]:
    """K frames of the first `pool_size` of the COCO split `calib_dir`, chosen as the demo does:
    hard_tail_mix over the difficulty its reference scorer gives (`tasks.difficulty.assess`), strata
    by condition. Returns the encoded frames in NNCF's order and a line saying what was chosen."""
    import json

    from tasks.config import SelectionConfig
    from tasks.difficulty import assess
    from tasks.imaging import decode_rgb
    from tasks.selection.pool import PoolItem, SelectionInput
    from tasks.selection.strategies import select_calibration_set

    if not (calib_dir / "annotations.json").exists():
        raise SystemExit(f"no calibration split at {calib_dir}: `tailcal train-detector` writes data/detector-train")
    records = json.loads((calib_dir / "annotations.json").read_text())["images"][:pool_size]
    frames = {r["file_name"]: (calib_dir / "images" / r["file_name"]).read_bytes() for r in records}
    items = tuple(
        PoolItem(r["file_name"], assess(decode_rgb(frames[r["file_name"]])).difficulty, r.get("condition"), position=i)
        for i, r in enumerate(records)
    )
    selection = select_calibration_set(SelectionInput(items), SelectionConfig(strategy="hard_tail_mix", k=k))
    conditions = Counter(item.condition for item in items if item.id in set(selection.ids))
    note = f"hard_tail_mix K={k} of the first {len(items)} frames of {calib_dir}: {dict(conditions.most_common())}"
    return [frames[i] for i in selection.ids], note


def family_irs(args) -> Path:
    """The FP16 and INT8 IRs of `--architecture` with `--checkpoint`'s weights, in --out-dir:
    reused while newer than the checkpoint, else exported and quantized here (minutes for a
    ResNet-50 family: NNCF runs one forward pass per calibration frame)."""
    from tasks.calibration.quantize import quantize_ir
    from tasks.config import DetectorConfig, QuantizationConfig
    from tasks.detection.export import export_ir
    from tasks.detection.families import adapter_for, build_detector, input_size_of

    detector = DetectorConfig(
        architecture=args.architecture,
        num_classes=args.num_classes,
        input_size=args.input_size,
        checkpoint=str(args.checkpoint),
    )
    size = input_size_of(detector)
    recipe = QuantizationConfig(range_estimator=args.range_estimator, bias_correction=args.bias_correction)
    name = f"{args.architecture}-{size}-{args.range_estimator}-{args.bias_correction}"
    out_dir = args.out_dir or Path("data/router") / name
    fp16_xml, int8_xml = out_dir / "detector_fp16.xml", out_dir / "detector_int8.xml"
    built = min((x.stat().st_mtime for x in (fp16_xml, int8_xml) if x.exists()), default=0.0)
    if fp16_xml.exists() and int8_xml.exists() and built > args.checkpoint.stat().st_mtime:
        say(f"IRs of {args.architecture} at {size} px reused from {out_dir} (newer than {args.checkpoint})")
        return out_dir
    model = build_detector(detector)
    exported = export_ir(model, out_dir, adapter_for(model, detector, size))
    del model
    say(f"exported {args.architecture} at {size} px from {args.checkpoint} in {exported.wall_s:.1f} s")
    calibration, note = calibration_selection(args.calib_dir, args.pool_size, args.k)
    started = time.perf_counter()
    quantize_ir(exported.xml_path, calibration, recipe, out_dir)
    say(
        f"quantized ({args.range_estimator}, bias correction {args.bias_correction}) in "
        f"{time.perf_counter() - started:.1f} s on {note}"
    )
    return out_dir


def ir_and_decode_ms(tiers: dict[str, Path], image: bytes) -> dict[str, tuple[float, float]]:
    """Per tier: median ms of the IR call and of decoding its outputs, batch 1, on one frame."""
    from bench.ptq import split_latency
    from tasks.imaging import decode_rgb

    frame = decode_rgb(image)
    return {name: split_latency(path, frame, 20) for name, path in tiers.items() if name in ("fp16", "int8")}


def threshold_sweep(rows: dict[str, dict], common: set[int], coco: dict, category_ids: tuple[int, ...]) -> None:
    """Routed mAP and estimated throughput had frames with difficulty ≥ t gone to FP16, the rest to INT8."""
    fp16, int8, routed = rows["all-fp16"], rows["all-int8"], rows["routed"]
    difficulty = routed["difficulty"]
    say("\nwhat an FP16 threshold t would give (difficulty ≥ t → FP16, else INT8; throughput estimated from")
    say("the two tiers' req/s above; `serving.medium_difficulty` and `hard_difficulty` both t without a mixed tier):")
    say(f"{'t':>6} {'FP16 share':>10} {'mAP':>7} {'gap pts':>8} {'est. ×FP16':>10}")
    fp16_map = served_map(coco, fp16["results"], category_ids, common)
    for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.01):
        hard = {i for i in common if difficulty[i] >= t}
        mixed = {i: (fp16 if i in hard else int8)["results"][i] for i in common}
        share = len(hard) / len(common)
        value = served_map(coco, mixed, category_ids, common)
        speedup = 1.0 / (share + (1 - share) * fp16["ips"] / int8["ips"])
        label = f"{t:.2f}" if t <= 1 else "never"
        say(f"{label:>6} {share:>10.0%} {value:>7.4f} {100 * (fp16_map - value):>+8.2f} {speedup:>10.2f}")


def main() -> None:
    from tasks.config import load_config
    from tasks.detection.families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ir-dir", type=Path, default=None, help="release ir/ dir (detector_int8.xml, _fp16.xml)")
    parser.add_argument("--architecture", default=None, choices=list(FAMILIES), help="build IRs of this family")
    parser.add_argument("--checkpoint", type=Path, default=None, help="with --architecture: its trained weights")
    parser.add_argument("--input-size", type=int, default=None, help="with --architecture (default: its standard)")
    parser.add_argument("--num-classes", type=int, default=4, help="with --architecture: detector.num_classes")
    parser.add_argument("--calib-dir", type=Path, default=Path("data/detector-train"), help="pool to calibrate on")
    parser.add_argument("--pool-size", type=int, default=2000, help="first N frames of --calib-dir form the pool")
    parser.add_argument("--k", type=int, default=256, help="calibration frames (the demo's selection.k)")
    demo = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").quantization
    parser.add_argument(
        "--range-estimator",
        default=demo.range_estimator,
        choices=["MINMAX", "MEAN_MINMAX"],
        help="with --architecture (default: the demo's)",
    )
    parser.add_argument(
        "--bias-correction",
        default=demo.bias_correction,
        choices=["fast", "none"],
        help="with --architecture (default: the demo's)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="built IRs (default data/router/<family>-<size>-<estimator>-<bias correction>)",
    )
    parser.add_argument("--eval-dir", type=Path, default=Path("data/demo/eval"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per mode; the run stops by itself")
    parser.add_argument("--infer-requests", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per OpenVINO request (0: auto)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each mode keeps its best")
    parser.add_argument("--config", default=None, help="YAML whose `serving` section sets the thresholds")
    args = parser.parse_args()
    if args.architecture and not (args.checkpoint and args.checkpoint.exists()):
        raise SystemExit(f"--architecture {args.architecture} needs --checkpoint, an existing file (train-detector's)")

    from tasks.evaluation.split import load_eval_split

    ir_dir = family_irs(args) if args.architecture else args.ir_dir or newest_release_ir_dir(Path("data/demo"))
    if ir_dir is None:
        raise SystemExit("no release IRs found: run `make demo`, pass --ir-dir, or --architecture and --checkpoint")
    tiers = {"int8": ir_dir / "detector_int8.xml", "fp16": ir_dir / "detector_fp16.xml"}
    if (ir_dir / "detector_int8_ac.xml").exists():
        tiers["mixed"] = ir_dir / "detector_int8_ac.xml"
    # Served labels are scored with the split's default mapping (label i → i-th smallest category id).
    split = load_eval_split(args.eval_dir, args.images)
    coco = split.coco
    bodies = [(args.eval_dir / "images" / img["file_name"]).read_bytes() for img in coco["images"]]
    conditions = Counter(img.get("condition", "unknown") for img in coco["images"])
    say(f"router bench: {len(bodies)} eval images ({dict(conditions.most_common())}), IRs {ir_dir}")
    say(
        f"concurrency {args.concurrency}, {args.infer_requests} OpenVINO requests/tier x {args.threads or 'auto'} "
        f"thread(s), {os.cpu_count()} CPUs, best of {args.rounds} alternating rounds"
    )

    modes = {"all-fp16": {"fp16": tiers["fp16"]}, "all-int8": {"int8": tiers["int8"]}, "routed": tiers}
    rows: dict[str, dict] = {}
    # Neighbours share the CPU: alternate the modes and keep each one's best round.
    for _ in range(args.rounds):
        for mode, mode_tiers in modes.items():
            row = measure(mode_tiers, args, bodies)
            if mode not in rows or row["ips"] > rows[mode]["ips"]:
                rows[mode] = row
    common = set.intersection(*(set(row["results"]) for row in rows.values()))
    for row in rows.values():
        row["map"] = served_map(coco, row["results"], split.category_ids, common)

    say(f"\nmAP on the {len(common)} images every mode served")
    say(f"{'mode':<10} {'req':>5} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'mAP':>7}  tiers")
    for mode, row in rows.items():
        say(
            f"{mode:<10} {row['n']:>5} {row['ips']:>7.2f} {row['p50']:>8.1f} {row['p99']:>8.1f} "
            f"{row['map']:>7.4f}  {row['tiers']}"
        )
    fp16, int8, routed = rows["all-fp16"], rows["all-int8"], rows["routed"]
    gap = fp16["map"] - routed["map"]
    speedup = routed["ips"] / fp16["ips"]
    say(f"\nrouted vs all-fp16: mAP gap {gap:+.4f} ({100 * gap:+.2f} mAP points), throughput ×{speedup:.2f}")
    say(f"all-int8 vs all-fp16: mAP gap {fp16['map'] - int8['map']:+.4f}, throughput ×{int8['ips'] / fp16['ips']:.2f}")
    for tier in ("int8", "fp16"):
        routed_here = {i for i in common if routed["served_by"].get(i) == tier}
        if routed_here:
            on_fp16 = served_map(coco, fp16["results"], split.category_ids, routed_here)
            on_int8 = served_map(coco, int8["results"], split.category_ids, routed_here)
            say(
                f"  on the {len(routed_here)} frames routed to {tier}: FP16 mAP {on_fp16:.4f}, INT8 {on_int8:.4f} "
                f"(gap {on_fp16 - on_int8:+.4f})"
            )
    for name, (ir_ms, decode_ms) in ir_and_decode_ms(tiers, bodies[0]).items():
        say(f"  {name} per request, batch 1: IR {ir_ms:.1f} ms + decoding {decode_ms:.1f} ms")
    threshold_sweep(rows, common, coco, split.category_ids)
    say(
        f"\ngoal: gap ≤ 0.2 mAP points {'MET' if 100 * gap <= 0.2 else 'NOT MET'}; "
        f"throughput ≥ 1.3× {'MET' if speedup >= 1.3 else 'NOT MET'}"
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    say(f"load average {load} at the end of the run")


if __name__ == "__main__":
    main()
