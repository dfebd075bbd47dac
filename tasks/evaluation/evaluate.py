"""Evaluate the detector on a labelled split: COCO mAP overall, per condition and per class, plus speed.

Every path into mAP — PyTorch, FP16 IR, INT8 IR — uses the same pre- and post-processing
(`tasks.detection`), so a gap between two results is the models' own.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.config import EvaluationConfig
from tasks.detection.postprocess import Detections
from tasks.evaluation.coco import coco_map
from tasks.evaluation.matches import ImageMatches, image_matches
from tasks.evaluation.split import EvalSplit

if TYPE_CHECKING:
    from tasks.detection.adapter import Adapter
    from tasks.detection.runtime import Speed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """One model's evaluation on a COCO split; latency/throughput are None where not measured.

    map/map50: mAP@[.5:.95] and mAP@.5 in [0, 1]; per_class and per_condition hold
    mAP@[.5:.95] (NaN: no ground truth); latency_ms is batch-1 latency in ms and
    throughput_ips images/s with parallel requests; condition_images counts the split's images
    per condition (what each per_condition figure rests on). `matches` is the per-image matching
    behind `map`, which bootstrap intervals over the eval images re-accumulate
    (`tasks.evaluation.bootstrap`); None for results built by hand.
    """

    map: float
    map50: float
    per_class: dict[str, float]
    per_condition: dict[str, float]
    per_condition_map50: dict[str, float]
    images: int
    latency_ms: float | None = None
    throughput_ips: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    condition_images: dict[str, int] = field(default_factory=dict)
    matches: ImageMatches | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        """Every figure, JSON-ready; the matches are left out (`ImageMatches.save` writes them)."""
        return {name: value for name, value in asdict(replace(self, matches=None)).items() if name != "matches"}


def _result(split: EvalSplit, detections: list[Detections], **speed) -> EvalResult:
    by_id = dict(zip(split.image_ids, detections, strict=True))
    scored = coco_map(split.coco, by_id, split.category_ids)
    return EvalResult(
        map=scored.map,
        map50=scored.map50,
        per_class=scored.per_class,
        per_condition=scored.per_condition,
        per_condition_map50=scored.per_condition_map50,
        images=len(detections),
        condition_images=dict(Counter(img.get("condition", "unknown") for img in split.coco["images"])),
        matches=image_matches(split.coco, by_id, split.category_ids),
        **speed,
    )


def evaluate_ir(ir_path: Path, split: EvalSplit, config: EvaluationConfig, measure_speed: bool = True) -> EvalResult:
    """mAP of an OpenVINO IR on `split`, plus (unless `measure_speed` is off) its latency and
    throughput over `config.latency_iterations`."""
    from tasks.detection import runtime

    detector = runtime.load_detector(ir_path)
    detections = runtime.detect(detector, split.images)
    speed = {}
    if measure_speed:
        measured = runtime.measure_speed(ir_path, split.images[0], iterations=config.latency_iterations)
        speed = {"latency_ms": measured.latency_ms, "throughput_ips": measured.throughput_ips}
    result = _result(split, detections, **speed)
    logger.info("%s: mAP %.4f, mAP@.5 %.4f on %d images", ir_path.name, result.map, result.map50, result.images)
    return result


def evaluate_ir_cached(ir_path: Path, split: EvalSplit, config: EvaluationConfig) -> EvalResult:
    """`evaluate_ir`'s accuracy (no speed), remembered beside the IR per split (`EvalSplit.cache_key`:
    annotations digest and label mapping).

    For the FP16 IR, which every run and ablation cell on the same checkpoint shares. Speed
    is never cached: a figure measured in another run, under another load, would make any
    ratio with this run's INT8 speed meaningless (see `measure_speeds`).
    """
    cached = ir_path.parent / f"map-{split.cache_key}.json"
    cached_matches = cached.with_suffix(".npz")
    # A cache written before matches were kept lacks the .npz: it is evaluated again.
    if cached.exists() and cached_matches.exists():
        return EvalResult(**json.loads(cached.read_text()), matches=ImageMatches.load(cached_matches))
    result = evaluate_ir(ir_path, split, config, measure_speed=False)
    result.matches.save(cached_matches)
    cached.write_text(json.dumps(result.as_dict()))
    return result


def measure_speeds(ir_paths: Sequence[Path], split: EvalSplit, config: EvaluationConfig) -> dict[Path, Speed]:
    """Batch-1 latency (ms) and throughput (images/s) of each IR on the split's first image,
    measured now, in alternating rounds, best round kept (`runtime.compare_speed`): the CPU is
    shared, and IRs measured apart would be compared under different loads."""
    from tasks.detection.runtime import compare_speed

    return compare_speed(list(ir_paths), split.images[0], iterations=config.latency_iterations)


def with_speed(result: EvalResult, speed: Speed) -> EvalResult:
    """`result` with the latency and throughput of `speed`."""
    return replace(result, latency_ms=speed.latency_ms, throughput_ips=speed.throughput_ips)


def map_validation_fn(split: EvalSplit, adapter: Adapter) -> Callable[[object, list[tuple[int, np.ndarray]]], float]:
    """mAP@[.5:.95] of a compiled IR on whichever (image id, image) items it is given: NNCF's validation_fn."""
    from tasks.detection.runtime import raw_outputs

    coco, category_ids = split.coco, split.category_ids

    def validate(compiled_model, items: list[tuple[int, np.ndarray]]) -> float:
        ids = [image_id for image_id, _ in items]
        detections = adapter.detect_with(lambda batch: raw_outputs(compiled_model, batch), [i for _, i in items])
        wanted = set(ids)
        subset = dict(coco)
        subset["images"] = [img for img in coco["images"] if img["id"] in wanted]
        subset["annotations"] = [a for a in coco["annotations"] if a["image_id"] in wanted]
        return coco_map(subset, dict(zip(ids, detections, strict=True)), category_ids, breakdown=False).map

    return validate


def torch_detect(model, images: Sequence[np.ndarray], adapter: Adapter, batch_size: int = 32) -> list[Detections]:
    """The IR's traceable part run in PyTorch, then the same adapter (pre/post-processing) as the IRs."""
    import torch

    from tasks.detection.families import traceable

    part = traceable(model)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return [output.numpy() for output in part(torch.from_numpy(batch))]

    with torch.no_grad():
        return adapter.detect_with(run, images, batch_size)


def evaluate_torch(model, split: EvalSplit, adapter: Adapter) -> EvalResult:
    """mAP of the PyTorch model (no speed: the IRs are what ships)."""
    return _result(split, torch_detect(model, split.images, adapter))
