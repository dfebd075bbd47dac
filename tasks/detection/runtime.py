"""Run an OpenVINO IR of the detector on the CPU: compile, infer in batches, time it.

FP16 and INT8 IRs go through exactly these functions, so their results differ only by
the model. `INFERENCE_PRECISION_HINT=f32` is set explicitly: this CPU has no native
fp16/bf16, and a plugin default that changes between releases must not move a baseline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.detection.adapter import Adapter
from tasks.detection.postprocess import Detections
from tasks.detection.preprocess import Preprocessing

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speed:
    """Latency of one image per synchronous request, and throughput with parallel requests."""

    latency_ms: float
    throughput_ips: float


@dataclass(frozen=True)
class CompiledDetector:
    """A compiled IR and the adapter (preprocessing + decoder) it was exported with."""

    compiled: object  # openvino.CompiledModel
    adapter: Adapter

    @property
    def preprocessing(self) -> Preprocessing:
        return self.adapter.preprocessing


def load_detector(ir_path: Path, hint: str = "LATENCY", threads: int | None = None) -> CompiledDetector:
    """The IR compiled for the CPU (f32 precision hint, the given performance hint), with its adapter."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(ir_path))
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    adapter = Adapter.of_model(model, ir_path)
    return CompiledDetector(core.compile_model(model, "CPU", config), adapter)


def adapter_of(ir_path: Path) -> Adapter:
    """The adapter an IR records (see `Adapter.of_model`)."""
    import openvino as ov

    return Adapter.of_model(ov.Core().read_model(str(ir_path)), ir_path)


def preprocessing_of(ir_path: Path) -> Preprocessing:
    """The preprocessing contract an IR records (see `Preprocessing.of_model`)."""
    import openvino as ov

    return Preprocessing.of_model(ov.Core().read_model(str(ir_path)))


def raw_outputs(compiled, batch: np.ndarray) -> list[np.ndarray]:
    """Normalised float32 [N, 3, S, S] → the IR's output tensors, in its output order. An IR
    whose batch is fixed at 1 (some exports bake it in) runs image by image."""
    if batch.shape[0] > 1 and compiled.inputs[0].get_partial_shape()[0].is_static:
        per_image = [raw_outputs(compiled, batch[i : i + 1]) for i in range(batch.shape[0])]
        return [np.concatenate(parts) for parts in zip(*per_image, strict=True)]
    result = compiled(batch)
    return [result[output] for output in compiled.outputs]


def detect(detector: CompiledDetector, images: Sequence[np.ndarray | bytes], batch_size: int = 16) -> list[Detections]:
    """Images (uint8 RGB arrays or encoded bytes, any sizes) → detections in each image's own
    pixels, through the IR's adapter."""
    return detector.adapter.detect_with(lambda batch: raw_outputs(detector.compiled, batch), images, batch_size)


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

    runners = {}
    for path in ir_paths:
        detector = load_detector(path, "LATENCY")
        sample = detector.preprocessing.batch([image])[0]
        request = detector.compiled.create_infer_request()
        queue = ov.AsyncInferQueue(load_detector(path, "THROUGHPUT").compiled)
        for _ in range(5):
            request.infer(sample)
        for _ in range(len(queue)):
            queue.start_async(sample)
        queue.wait_all()
        runners[path] = (request, queue, sample)
    best = {path: Speed(latency_ms=float("inf"), throughput_ips=0.0) for path in ir_paths}
    for _ in range(rounds):
        for path, (request, queue, sample) in runners.items():
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
