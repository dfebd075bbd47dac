"""Router benchmark: the service on loopback, all-FP16 vs all-INT8 vs routed, on the eval split's mix.

    .venv/bin/python bench/router.py --images 300 --concurrency 4

Each mode starts the real service (`tailcal serve`) in its own process with
only the tiers it may use, warms it, then sends the first N eval images (the benchmark's
long-tailed condition mix: ~58 % normal, the rest hard conditions) with a bounded number
in flight, and stops after N requests or --max-seconds, whichever first. Prints
throughput, p50/p99 client latency, mAP@[.5:.95] from the served boxes, and the tiers
the router chose. Goal: routed mAP within 0.2 (mAP points) of all-FP16 at ≥ 1.3× its
throughput. The tiers are a release run's IRs (default: the newest
data/demo/mlartifacts/*/artifacts/ir holding both).
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
                fallbacks += "X-Tailcal-Fallback-From" in response.headers

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"results": results, "latencies": latencies, "wall": wall, "tiers": tiers, "fallbacks": fallbacks}


def served_map(coco: dict, results: dict[int, dict], category_ids: tuple[int, ...]) -> float:
    from tasks.detection.postprocess import Detections
    from tasks.evaluation.coco import coco_map

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


def measure(mode_tiers: dict[str, Path], args, bodies: list[bytes], coco: dict, category_ids: tuple[int, ...]) -> dict:
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
        "map": served_map(coco, run["results"], category_ids),
        "tiers": dict(run["tiers"]),
        "fallbacks": run["fallbacks"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ir-dir", type=Path, default=None, help="release ir/ dir (detector_int8.xml, _fp16.xml)")
    parser.add_argument("--eval-dir", type=Path, default=Path("data/demo/eval"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per mode; the run stops by itself")
    parser.add_argument("--infer-requests", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per OpenVINO request (0: auto)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each mode keeps its best")
    parser.add_argument("--config", default=None, help="YAML whose `serving` section sets the thresholds")
    args = parser.parse_args()

    from tasks.evaluation.split import load_eval_split

    ir_dir = args.ir_dir or newest_release_ir_dir(Path("data/demo"))
    if ir_dir is None:
        raise SystemExit("no release IRs found: run `make demo` or pass --ir-dir")
    tiers = {"int8": ir_dir / "detector_int8.xml", "fp16": ir_dir / "detector_fp16.xml"}
    if (ir_dir / "detector_int8_ac.xml").exists():
        tiers["mixed"] = ir_dir / "detector_int8_ac.xml"
    # Served labels are scored with the split's default mapping (label i → i-th smallest category id).
    split = load_eval_split(args.eval_dir, args.images)
    coco = split.coco
    bodies = [(args.eval_dir / "images" / img["file_name"]).read_bytes() for img in coco["images"]]
    conditions = Counter(img.get("condition", "unknown") for img in coco["images"])
    print(f"router bench: {len(bodies)} eval images ({dict(conditions.most_common())}), IRs {ir_dir}")
    print(
        f"concurrency {args.concurrency}, {args.infer_requests} OpenVINO requests/tier x {args.threads or 'auto'} "
        f"thread(s), {os.cpu_count()} CPUs, best of {args.rounds} alternating rounds"
    )

    modes = {"all-fp16": {"fp16": tiers["fp16"]}, "all-int8": {"int8": tiers["int8"]}, "routed": tiers}
    rows: dict[str, dict] = {}
    # Neighbours share the CPU: alternate the modes and keep each one's best round.
    for _ in range(args.rounds):
        for mode, mode_tiers in modes.items():
            row = measure(mode_tiers, args, bodies, coco, split.category_ids)
            if mode not in rows or row["ips"] > rows[mode]["ips"]:
                rows[mode] = row

    print(f"\n{'mode':<10} {'req':>5} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'mAP':>7}  tiers")
    for mode, row in rows.items():
        print(
            f"{mode:<10} {row['n']:>5} {row['ips']:>7.1f} {row['p50']:>8.1f} {row['p99']:>8.1f} "
            f"{row['map']:>7.4f}  {row['tiers']}"
        )
    fp16, routed = rows["all-fp16"], rows["routed"]
    gap = fp16["map"] - routed["map"]
    speedup = routed["ips"] / fp16["ips"]
    print(f"\nrouted vs all-fp16: mAP gap {gap:+.4f} ({100 * gap:+.2f} mAP points), throughput ×{speedup:.2f}")
    print(
        f"goal: gap ≤ 0.2 mAP points {'MET' if 100 * gap <= 0.2 else 'NOT MET'}; "
        f"throughput ≥ 1.3× {'MET' if speedup >= 1.3 else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()
