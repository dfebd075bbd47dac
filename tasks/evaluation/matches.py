"""Per-image COCO matching of one model's detections, and mAP@[.5:.95] re-accumulated from it
with a weight per image.

A bootstrap over eval images needs the mAP of hundreds of resampled splits. Matching a
detection to a ground-truth box depends only on its own image, so the matching is done once
per model and only the accumulation (precision/recall over the whole split) is redone per
resample, with each image counted as often as the resample drew it.

The matching is faster-coco-eval's own: faster-coco-eval 1.8 keeps its per-image results
(`evalImgs`) in C++ objects Python cannot read, but its evaluation returns every
(detection, ground truth) pair it matched. Run once per IoU threshold, with the "all" area
range and 100 detections per image (the settings of mAP@[.5:.95]), those pairs are the
matching COCOeval accumulates. The accumulation with image weights is written here: no
library accumulates weighted images. It follows faster-coco-eval's `COCOeval::Accumulate`
(pycocotools' `accumulate`: per category, detections of every image in image order, stably
sorted by score; precision made monotone from the right and read at the first point whose
recall reaches each of the 101 recall thresholds), and with every weight 1 it reproduces the
library's mAP@[.5:.95] (tests/evaluation/test_matches.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.detection.postprocess import Detections
from tasks.errors import TailcalError
from tasks.evaluation.coco import coco_apis, detection_results, label_mapping

logger = logging.getLogger(__name__)

# Resamples accumulated at once: bounds the [resamples, detections] cumulative sums to ~10 MB per category.
_CHUNK = 64


class MatchesError(TailcalError):
    """Per-image matches cannot be used as asked (another split, wrong weights, unreadable file)."""


@dataclass(frozen=True)
class ImageMatches:
    """One model's COCO matching on one split, in COCOeval's accumulation order.

    Images and categories are in COCOeval's order (ascending ids). Detections (D of them)
    are grouped by category (`category_offsets[k]:category_offsets[k + 1]`) and, within a
    category, in the order COCOeval accumulates them. `tp[t, d]` / `fp[t, d]`: detection d is
    a true / false positive at IoU threshold t (neither: matched to an ignored, crowd, box).

    image_ids: int64 [N]; category_ids: int64 [K]; iou_thresholds: float64 [T] (0.50…0.95);
    recall_thresholds: float64 [R] (0, 0.01, …, 1); gt_counts: int64 [N, K], ground-truth
    boxes that count (not crowd) per image and category; image: int64 [D], index into
    image_ids; score: float64 [D]; tp, fp: bool [T, D]; category_offsets: int64 [K + 1].
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    gt_counts: np.ndarray
    image: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    category_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    def same_split(self, other: ImageMatches) -> bool:
        """Both were matched on the same images, categories, ground truth and thresholds."""
        return all(
            np.array_equal(getattr(self, name), getattr(other, name))
            for name in ("image_ids", "category_ids", "gt_counts", "iou_thresholds", "recall_thresholds")
        )

    def save(self, path: Path) -> Path:
        """Write to `path` (.npz, compressed): a few hundred kB for 500 images × 100 detections."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            np.savez_compressed(handle, **{name: getattr(self, name) for name in _FIELDS})
        return path

    @classmethod
    def load(cls, path: Path) -> ImageMatches:
        """Read what `save` wrote. Raises MatchesError naming the file when it is not such a file."""
        try:
            with np.load(path) as stored:
                return cls(**{name: stored[name] for name in _FIELDS})
        except (OSError, KeyError, ValueError) as exc:
            raise MatchesError(f"{path} is not a per-image matches file ({exc}): evaluate the model again") from None


_FIELDS = tuple(ImageMatches.__dataclass_fields__)


def image_matches(
    coco: dict, detections: Mapping[int, Detections], category_ids: Sequence[int], max_detections: int = 100
) -> ImageMatches:
    """The matching behind mAP@[.5:.95] of `detections` (keyed by COCO image id) on `coco`.

    Detector label i is category `category_ids[i]` (as in `coco_map`). Raises CategoryMapError
    (from `tasks.evaluation.coco`) when the mapping and the split disagree.
    """
    from faster_coco_eval import COCOeval_faster
    from faster_coco_eval.core.cocoeval import Params

    params = Params(iouType="bbox")
    results = detection_results(detections, label_mapping(coco, category_ids))
    gt, dt = coco_apis(coco, results)
    image_ids = np.asarray(sorted(gt.getImgIds()), np.int64)
    category_ids_all = np.asarray(sorted(gt.getCatIds()), np.int64)
    all_area = [float(v) for v in params.areaRng[params.areaRngLbl.index("all")]]
    thresholds = np.asarray(params.iouThrs, np.float64)

    # matched[t, r] = id of the ground-truth box result r matched at threshold t (0: none, as in COCOeval).
    matched = np.zeros((len(thresholds), len(results)), np.int64)
    for t, threshold in enumerate(thresholds):
        if not results:
            break
        evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=logger.debug)
        evaluator.params.iouThrs = np.asarray([threshold])
        evaluator.params.areaRng, evaluator.params.areaRngLbl = [all_area], ["all"]
        evaluator.params.maxDets = [max_detections]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
        for key in evaluator.eval["matched"]:
            dt_id, gt_id = (int(part) for part in key.split("_", 1))
            matched[t, dt_id - 1] = gt_id  # loadRes numbers results 1, 2, … in order

    annotations = gt.loadAnns(gt.getAnnIds())
    # COCOeval's ground-truth ignore flag for the "all" area range: crowd, or an area outside it.
    ignored = {
        a["id"]: bool(a.get("iscrowd", 0)) or not all_area[0] <= a.get("area", 0.0) <= all_area[1] for a in annotations
    }
    image_index = {int(i): n for n, i in enumerate(image_ids)}
    category_index = {int(c): n for n, c in enumerate(category_ids_all)}
    gt_counts = np.zeros((len(image_ids), len(category_ids_all)), np.int64)
    for a in annotations:
        if not ignored[a["id"]]:
            gt_counts[image_index[a["image_id"]], category_index[a["category_id"]]] += 1

    order, image, category, score = _accumulation_order(results, image_index, category_index, max_detections)
    matched = matched[:, order]
    to_ignored = np.isin(matched, [gt_id for gt_id, flag in ignored.items() if flag])
    area = np.asarray([results[r]["bbox"][2] * results[r]["bbox"][3] for r in order], np.float64).reshape(len(order))
    # An unmatched detection outside the area range is ignored (never, for the "all" range, in practice).
    outside = (area < all_area[0]) | (area > all_area[1])
    tp = (matched > 0) & ~to_ignored
    fp = (matched == 0) & ~outside[None, :]
    offsets = np.searchsorted(category, np.arange(len(category_ids_all) + 1), side="left").astype(np.int64)
    return ImageMatches(
        image_ids=image_ids,
        category_ids=category_ids_all,
        iou_thresholds=thresholds,
        recall_thresholds=np.asarray(params.recThrs, np.float64),
        gt_counts=gt_counts,
        image=image,
        score=score,
        tp=tp,
        fp=fp,
        category_offsets=offsets,
    )


def _accumulation_order(
    results: list[dict], image_index: dict[int, int], category_index: dict[int, int], max_detections: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(result indices, image index, category index, score) of the detections COCOeval accumulates, in its order.

    Per image and category, COCOeval keeps the `max_detections` best by score (stable sort);
    per category it then concatenates images in id order and sorts stably by score.
    """
    n = len(results)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0, np.float64)
    image = np.asarray([image_index[r["image_id"]] for r in results], np.int64).reshape(n)
    category = np.asarray([category_index[r["category_id"]] for r in results], np.int64).reshape(n)
    score = np.asarray([r["score"] for r in results], np.float64).reshape(n)
    position = np.arange(n)
    # Within each (image, category): by score descending, ties in result order.
    within = np.lexsort((position, -score, category, image))
    group_start = np.r_[True, (np.diff(image[within]) != 0) | (np.diff(category[within]) != 0)]
    starts = np.maximum.accumulate(np.where(group_start, np.arange(n), 0))
    rank = np.empty(n, np.int64)
    rank[within] = np.arange(n) - starts
    kept = np.flatnonzero(rank < max_detections)
    # Per category: by score descending, ties by image order, then by rank within the image.
    order = kept[np.lexsort((rank[kept], image[kept], -score[kept], category[kept]))]
    return order, image[order], category[order], score[order]


def weighted_map(matches: ImageMatches, weights: np.ndarray) -> np.ndarray:
    """mAP@[.5:.95] with image i counted `weights[b, i]` times, for each row b of `weights`.

    weights: non-negative integers, [N] or [B, N] in `matches.image_ids` order (a bootstrap
    resample's multiplicities; all ones gives the split's mAP, zeros outside a subset gives
    the subset's). Returns float64 [B] ([1] for a 1-D input); NaN where the weighted images
    hold no ground truth of any category (COCOeval's −1). Raises MatchesError on weights of
    the wrong shape, negative or fractional.
    """
    weights = np.atleast_2d(np.asarray(weights))
    if weights.ndim != 2 or weights.shape[1] != len(matches):
        raise MatchesError(
            f"weights of shape {weights.shape} for {len(matches)} images: pass one weight per image ([N] or [B, N])"
        )
    if weights.size and (weights.min() < 0 or not np.array_equal(weights, np.round(weights))):
        raise MatchesError("image weights must be non-negative integers (how often a resample drew each image)")
    weights = weights.astype(np.float64)
    ap_sum = np.zeros(len(weights))
    ap_count = np.zeros(len(weights))
    for start in range(0, len(weights), _CHUNK):
        chunk = weights[start : start + _CHUNK]
        for k in range(len(matches.category_ids)):
            total, count = _category_ap_sum(matches, k, chunk)
            ap_sum[start : start + _CHUNK] += total
            ap_count[start : start + _CHUNK] += count
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ap_count > 0, ap_sum / np.maximum(ap_count, 1), np.nan)


def _category_ap_sum(matches: ImageMatches, k: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum over IoU thresholds of category k's AP per resample, and how many thresholds counted.

    Follows `ComputePrecisionRecallCurve` in faster-coco-eval's cocoeval.cpp, read only at
    true positives. Precision rises only at a true positive, and recall changes only there,
    so the point where recall first reaches a threshold is a true positive, and the best
    precision at or after it is found among true positives: reading the curve there and
    nowhere else gives the same interpolated precision with far less work.
    """
    lo, hi = matches.category_offsets[k], matches.category_offsets[k + 1]
    n_valid = weights @ matches.gt_counts[:, k].astype(np.float64)  # [B]
    present = n_valid > 0
    n_thresholds = len(matches.iou_thresholds)
    if not present.any():
        return np.zeros(len(weights)), np.zeros(len(weights))
    w = weights[:, matches.image[lo:hi]]  # [B, D_k]
    tp, fp = matches.tp[:, lo:hi], matches.fp[:, lo:hi]
    counted = tp | fp
    # Detections counted at every threshold (no ignored ones, the usual case) share one running total.
    shared = np.cumsum(w, axis=1) if counted.all() else None
    recall_targets = _recall_targets(matches.recall_thresholds, n_valid)  # [B, R]
    total = np.zeros(len(weights))
    for t in range(n_thresholds):
        positives = np.flatnonzero(tp[t])
        if positives.size == 0:
            continue  # every precision reads 0
        running = shared if shared is not None else np.cumsum(w * counted[t], axis=1)
        true_so_far = np.cumsum(w[:, positives], axis=1)  # [B, P]
        counted_so_far = running[:, positives]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(counted_so_far > 0, true_so_far / counted_so_far, 0.0)
        best_after = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        first = _first_at_least(true_so_far, recall_targets)  # [B, R], P where never reached
        padded = np.concatenate([best_after, np.zeros((len(weights), 1))], axis=1)
        total += np.take_along_axis(padded, first, axis=1).mean(axis=1)
    return np.where(present, total, 0.0), np.where(present, float(n_thresholds), 0.0)


def _recall_targets(recall_thresholds: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """[B, R] the fewest true positives c with c / n_valid ≥ r, computed as COCOeval's doubles compare.

    COCOeval finds the first point whose recall (true positives / ground truths, a double)
    reaches r; the true-positive count there is this c. ceil(r·n) can be one off after
    rounding, so the neighbours are checked with the same division.
    """
    n = np.where(n_valid > 0, n_valid, 1.0)[:, None]
    r = recall_thresholds[None, :]
    c = np.ceil(r * n)
    c = np.where((c - 1 >= 0) & ((c - 1) / n >= r), c - 1, c)
    return np.where(c / n < r, c + 1, c)


def _first_at_least(running: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[B, R] the first column where each row of `running` (non-decreasing, whole numbers ≥ 0)
    reaches each target; the row length where it never does.

    One searchsorted for every row: row b is shifted by b·(max + 2), which keeps the
    flattened array sorted because the values are exact whole numbers.
    """
    rows, width = running.shape
    stride = float(max(running.max(initial=0.0), targets.max(initial=0.0)) + 2)
    shift = np.arange(rows, dtype=np.float64)[:, None] * stride
    found = np.searchsorted((running + shift).ravel(), (targets + shift).ravel(), side="left")
    return (found.reshape(targets.shape) - np.arange(rows)[:, None] * width).clip(0, width)
