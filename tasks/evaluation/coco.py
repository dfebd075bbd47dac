"""COCO mAP of detections: overall, per class and per capture condition.

mAP comes from faster-coco-eval (pycocotools-exact, ~4× faster), never our own matching.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass

from tasks.detection.postprocess import Detections

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapResult:
    """mAP@[.5:.95] and mAP@.5; per_class and per_condition hold mAP@[.5:.95] (NaN: no ground truth)."""

    map: float
    map50: float
    per_class: dict[str, float]
    per_condition: dict[str, float]
    per_condition_map50: dict[str, float]


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
