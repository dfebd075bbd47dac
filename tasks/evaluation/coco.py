"""COCO mAP of detections: overall, per class and per capture condition.

mAP comes from faster-coco-eval (pycocotools-exact, ~4× faster), never our own matching.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tasks.detection.labels import CategoryMapError, split_categories
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


def coco_map(
    coco: dict, detections: dict[int, Detections], category_ids: Sequence[int], breakdown: bool = True
) -> MapResult:
    """Score detections (keyed by COCO image id) against `coco`; detector label i is category `category_ids[i]`.

    `category_ids` is the split's label mapping (`EvalSplit.category_ids`). Per-class AP is
    keyed by category name, whatever the ids or their order in the JSON. Raises
    CategoryMapError when the mapping names a category `coco` lacks or a detection's label
    has no category. `breakdown=False` skips the per-condition runs (one COCOeval each), for
    validation loops.
    """
    categories = split_categories(coco, "the COCO ground truth")
    results = detection_results(detections, label_mapping(coco, category_ids))
    overall = _run_cocoeval(coco, results, image_ids=None)
    truth = _truth_by_image(coco)
    truth_classes = {cat for cats in truth.values() for cat in cats}
    per_class = {name: _class_ap(overall, cat_id, cat_id in truth_classes) for cat_id, name in categories.items()}
    conditions = sorted({img.get("condition", "unknown") for img in coco["images"]}) if breakdown else []
    per_condition, per_condition50 = {}, {}
    for condition in conditions:
        ids = [img["id"] for img in coco["images"] if img.get("condition", "unknown") == condition]
        stats = _run_cocoeval(coco, results, image_ids=ids)
        per_condition[condition], per_condition50[condition] = _summary(stats, any(truth.get(i) for i in ids))
    mean, mean50 = _summary(overall, bool(truth_classes))
    return MapResult(mean, mean50, per_class, per_condition, per_condition50)


def _truth_by_image(coco: dict) -> dict[int, set[int]]:
    """Category ids of the boxes COCOeval counts as ground truth (not crowd), per image id."""
    truth: dict[int, set[int]] = {}
    for annotation in coco["annotations"]:
        if not annotation.get("iscrowd", 0):
            truth.setdefault(annotation["image_id"], set()).add(annotation["category_id"])
    return truth


def label_mapping(coco: dict, category_ids: Sequence[int]) -> list[int]:
    """`category_ids` as ints, checked against `coco`'s categories.

    Raises CategoryMapError when it names a category `coco` lacks or gives one category to two labels.
    """
    categories = split_categories(coco, "the COCO ground truth")
    mapping = [int(c) for c in category_ids]
    if unknown := [c for c in mapping if c not in categories]:
        raise CategoryMapError(
            f"label mapping {mapping} names category ids {unknown} that the COCO ground truth lacks "
            f"(ids found: {sorted(categories)}): load the split with load_eval_split and pass its category_ids"
        )
    if len(set(mapping)) != len(mapping):
        raise CategoryMapError(f"label mapping {mapping} gives one category to several labels: each needs its own")
    return mapping


def detection_results(detections: Mapping[int, Detections], mapping: Sequence[int]) -> list[dict]:
    """COCO result dicts (image_id, category_id, bbox as [x, y, w, h], score) of every detection,
    image by image in `detections` order; detector label i becomes category `mapping[i]`.

    Raises CategoryMapError when a label has no category in `mapping`.
    """
    results = []
    for image_id, det in detections.items():
        labels = np.asarray(det.labels).astype(np.int64, copy=False)
        if (stray := labels[(labels < 0) | (labels >= len(mapping))]).size:
            raise CategoryMapError(
                f"detections on image {image_id} carry labels {sorted(set(stray.tolist()))}, but the label mapping "
                f"{list(mapping)} covers labels 0–{len(mapping) - 1}: the detector's classes (detector.num_classes) "
                "and the eval split's categories disagree"
            )
        results += [
            {
                "image_id": image_id,
                "category_id": mapping[label],
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "score": float(score),
            }
            for (x0, y0, x1, y1), score, label in zip(det.boxes, det.scores, labels.tolist(), strict=True)
        ]
    return results


def coco_apis(coco: dict, results: list[dict]):
    """faster-coco-eval's ground-truth and result objects for `coco` and `results` (a private copy
    of `coco`: the library adds keys to the annotations it reads)."""
    from faster_coco_eval import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(coco))
        gt.createIndex()
        return gt, gt.loadRes(results)


def _run_cocoeval(coco: dict, results: list[dict], image_ids: list[int] | None):
    from faster_coco_eval import COCOeval_faster

    if not results:
        return None
    gt, dt = coco_apis(coco, results)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=logger.debug)
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _summary(evaluator, has_truth: bool) -> tuple[float, float]:
    # No ground truth: mAP is undefined (COCOeval's −1), never 0 — a 0 beside a 0 would read as
    # "INT8 loses nothing". No detections at all: pycocotools cannot even load an empty result
    # list, and the answer is known — every ground-truth box is missed.
    if not has_truth:
        return math.nan, math.nan
    if evaluator is None:
        return 0.0, 0.0
    stats = evaluator.stats
    return max(float(stats[0]), 0.0), max(float(stats[1]), 0.0)


def _class_ap(evaluator, category_id: int, has_truth: bool) -> float:
    if not has_truth:
        return math.nan
    if evaluator is None:
        return 0.0
    # The class axis follows the evaluator's own category order (sorted ids), not the JSON's.
    k = evaluator.params.catIds.index(category_id)
    precision = evaluator.eval["precision"][:, :, k, 0, -1]  # [IoU, recall, class, area=all, maxDets=100]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")
