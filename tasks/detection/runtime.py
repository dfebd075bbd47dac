"""Run an OpenVINO IR of the detector on the CPU: compile, infer in batches, time it.

FP16 and INT8 IRs go through exactly these functions, so their results differ only by
the model. `INFERENCE_PRECISION_HINT=f32` is set explicitly: this CPU has no native
fp16/bf16, and a plugin default that changes between releases must not move a baseline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.detection.postprocess import DEFAULT_PARAMS, Detections, PostprocessParams, decode_batch
from tasks.detection.preprocess import preprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speed:
    """Latency of one image per synchronous request, and throughput with parallel requests."""

    latency_ms: float
    throughput_ips: float


def compile_ir(ir_path: Path, hint: str = "LATENCY", threads: int | None = None):
    """A compiled CPU model with the f32 precision hint and the given performance hint."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(str(ir_path), "CPU", config)


def raw_outputs(compiled, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalized float32 [N,3,H,W] → the three head tensors, in OUTPUT_NAMES order."""
    result = compiled(batch)
    return tuple(result[output] for output in compiled.outputs)  # type: ignore[return-value]


def detect(
    compiled, images: list[np.ndarray], batch_size: int = 16, params: PostprocessParams = DEFAULT_PARAMS
) -> list[Detections]:
    """uint8 RGB images (one size) → detections, via the shared pre/post-processing."""
    detections: list[Detections] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        cls_logits, regression, ctrness = raw_outputs(compiled, preprocess(chunk))
        detections.extend(decode_batch(cls_logits, regression, ctrness, chunk[0].shape[0], params))
    return detections


def measure_speed(ir_path: Path, image: np.ndarray, iterations: int = 50, parallel_images: int = 64) -> Speed:
    """Batch-1 latency (LATENCY hint) and images/s with an async queue (THROUGHPUT hint), best of 3 rounds."""
    return compare_speed([ir_path], image, iterations, parallel_images)[ir_path]


def compare_speed(
    ir_paths: list[Path], image: np.ndarray, iterations: int = 50, parallel_images: int = 64, rounds: int = 3
) -> dict[Path, Speed]:
    """Speed of several IRs measured in alternating rounds, keeping each one's best round.

    The CPU is shared: measuring A then B lets a neighbour's burst land on one of them only.
    Alternating and keeping the best round compares the models, not the neighbours.
    """
    import openvino as ov

    sample = preprocess([image])
    runners = {}
    for path in ir_paths:
        request = compile_ir(path, "LATENCY").create_infer_request()
        queue = ov.AsyncInferQueue(compile_ir(path, "THROUGHPUT"))
        for _ in range(5):
            request.infer(sample)
        for _ in range(len(queue)):
            queue.start_async(sample)
        queue.wait_all()
        runners[path] = (request, queue)
    best = {path: Speed(latency_ms=float("inf"), throughput_ips=0.0) for path in ir_paths}
    for _ in range(rounds):
        for path, (request, queue) in runners.items():
            timings = []
            for _ in range(iterations):
                started = time.perf_counter()
                request.infer(sample)
                timings.append(time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(parallel_images):
                queue.start_async(sample)
            queue.wait_all()
            throughput = parallel_images / (time.perf_counter() - started)
            latency = float(np.median(timings)) * 1e3
            best[path] = Speed(min(best[path].latency_ms, latency), max(best[path].throughput_ips, throughput))
    for path, speed in best.items():
        logger.info("%s: %.2f ms/image latency, %.0f images/s", path.name, speed.latency_ms, speed.throughput_ips)
    return best
