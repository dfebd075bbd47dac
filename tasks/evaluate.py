"""Evaluate the detector: COCO mAP overall, per capture condition and per class, plus speed.

mAP comes from faster-coco-eval (pycocotools-exact, ~4× faster). Every path into it —
PyTorch, FP16 IR, INT8 IR — uses the same decoder (`tasks.detection.postprocess`), so a
gap between two results is the models' own.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tasks.detection.postprocess import DEFAULT_PARAMS, Detections, PostprocessParams, decode_batch, preprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapResult:
    """mAP@[.5:.95] and mAP@.5; per_class and per_condition hold mAP@[.5:.95] (NaN: no ground truth)."""

    map: float
    map50: float
    per_class: dict[str, float]
    per_condition: dict[str, float]
    per_condition_map50: dict[str, float]


@dataclass(frozen=True)
class EvalResult:
    """One model's evaluation on a COCO split; latency/throughput are None where not measured."""

    map: float
    map50: float
    per_class: dict[str, float]
    per_condition: dict[str, float]
    per_condition_map50: dict[str, float]
    images: int
    latency_ms: float | None = None
    throughput_ips: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def coco_map(coco: dict, detections: dict[int, Detections], breakdown: bool = True) -> MapResult:
    """Score detections (keyed by COCO image id; labels 0-based = category_id − 1) against `coco`.

    `breakdown=False` skips the per-condition runs (one COCOeval each), for validation loops.
    """
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    results = [
        {
            "image_id": image_id,
            "category_id": int(label) + 1,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "score": float(score),
        }
        for image_id, det in detections.items()
        for (x0, y0, x1, y1), score, label in zip(det.boxes, det.scores, det.labels, strict=True)
    ]
    overall = _run_cocoeval(coco, results, image_ids=None)
    per_class = {name: _class_ap(overall, list(categories).index(cat_id)) for cat_id, name in categories.items()}
    conditions = sorted({img.get("condition", "unknown") for img in coco["images"]}) if breakdown else []
    per_condition, per_condition50 = {}, {}
    for condition in conditions:
        ids = [img["id"] for img in coco["images"] if img.get("condition", "unknown") == condition]
        stats = _run_cocoeval(coco, results, image_ids=ids)
        per_condition[condition], per_condition50[condition] = _summary(stats)
    mean, mean50 = _summary(overall)
    return MapResult(mean, mean50, per_class, per_condition, per_condition50)


def _run_cocoeval(coco: dict, results: list[dict], image_ids: list[int] | None):
    from faster_coco_eval import COCO, COCOeval_faster

    if not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(coco))
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=logger.debug)
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _summary(evaluator) -> tuple[float, float]:
    # No detections at all: pycocotools cannot even load an empty result list, and the
    # answer is known — every ground-truth box is missed.
    if evaluator is None:
        return 0.0, 0.0
    stats = evaluator.stats
    return max(float(stats[0]), 0.0), max(float(stats[1]), 0.0)


def _class_ap(evaluator, k: int) -> float:
    if evaluator is None:
        return 0.0
    precision = evaluator.eval["precision"][:, :, k, 0, -1]  # [IoU, recall, class, area=all, maxDets=100]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")


def load_eval_split(coco_dir: Path, limit: int | None = None) -> tuple[dict, list[np.ndarray]]:
    """COCO dict (trimmed to `limit` images) and the decoded images in its order."""
    from tasks.detection.postprocess import decode_image

    coco = json.loads((coco_dir / "annotations.json").read_text())
    if limit:
        coco["images"] = coco["images"][:limit]
        kept = {img["id"] for img in coco["images"]}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
    images = [decode_image((coco_dir / "images" / img["file_name"]).read_bytes()) for img in coco["images"]]
    return coco, images


def _result(coco: dict, detections: list[Detections], **speed) -> EvalResult:
    scored = coco_map(coco, {img["id"]: det for img, det in zip(coco["images"], detections, strict=True)})
    return EvalResult(
        map=scored.map,
        map50=scored.map50,
        per_class=scored.per_class,
        per_condition=scored.per_condition,
        per_condition_map50=scored.per_condition_map50,
        images=len(detections),
        **speed,
    )


def evaluate_ir(
    ir_path: Path,
    coco_dir: Path,
    latency_iterations: int = 50,
    limit: int | None = None,
    params: PostprocessParams = DEFAULT_PARAMS,
) -> EvalResult:
    """mAP of an OpenVINO IR on a COCO split, plus its latency and throughput (0 iterations: skip speed)."""
    from tasks.detection.runtime import compile_ir, detect, measure_speed

    coco, images = load_eval_split(coco_dir, limit)
    detections = detect(compile_ir(ir_path), images, params=params)
    speed = {}
    if latency_iterations:
        measured = measure_speed(ir_path, images[0], iterations=latency_iterations)
        speed = {"latency_ms": measured.latency_ms, "throughput_ips": measured.throughput_ips}
    result = _result(coco, detections, **speed)
    logger.info("%s: mAP %.4f, mAP@.5 %.4f on %d images", ir_path.name, result.map, result.map50, result.images)
    return result


def map_validation_fn(coco: dict) -> Callable[[object, list[tuple[int, np.ndarray]]], float]:
    """mAP@[.5:.95] of a compiled IR on whichever (image id, image) items it is given: NNCF's validation_fn."""
    from tasks.detection.runtime import detect

    def validate(compiled_model, items: list[tuple[int, np.ndarray]]) -> float:
        ids = [image_id for image_id, _ in items]
        detections = detect(compiled_model, [image for _, image in items])
        wanted = set(ids)
        subset = dict(coco)
        subset["images"] = [img for img in coco["images"] if img["id"] in wanted]
        subset["annotations"] = [a for a in coco["annotations"] if a["image_id"] in wanted]
        return coco_map(subset, dict(zip(ids, detections, strict=True)), breakdown=False).map

    return validate


def torch_detect(
    model, images: list[np.ndarray], batch_size: int = 32, params: PostprocessParams = DEFAULT_PARAMS
) -> list[Detections]:
    """PyTorch backbone + head, then the same decoder as the IRs."""
    import torch

    from tasks.detector import RawHeadModel

    wrapper = RawHeadModel(model).eval()
    detections: list[Detections] = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            outputs = wrapper(torch.from_numpy(preprocess(chunk)))
            detections.extend(decode_batch(*(o.numpy() for o in outputs), chunk[0].shape[0], params))
    return detections


def evaluate_torch(model, coco_dir: Path, limit: int | None = None) -> EvalResult:
    """mAP of the PyTorch model (no speed: the IRs are what ships)."""
    coco, images = load_eval_split(coco_dir, limit)
    return _result(coco, torch_detect(model, images))


def evaluate_clipping(
    int8_ir_path: Path, fp_ir_path: Path, coco_dir: Path, images: int = 64, flag_fraction: float = 0.01
):
    """Activation clipping % per INT8 quantizer on the first `images` eval frames (FP activations)."""
    from tasks.detection.clipping import activation_clipping

    _, frames = load_eval_split(coco_dir, limit=images)
    return activation_clipping(int8_ir_path, fp_ir_path, [preprocess([f]) for f in frames], flag_fraction)
