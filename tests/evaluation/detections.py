"""Detections built from a COCO split's ground truth, for tests of matching and bootstrap intervals.

Shared by test_matches.py, test_bootstrap.py and tests/reporting/test_ablation_table.py.
"""

from __future__ import annotations

import numpy as np

from tasks.detection.postprocess import Detections


def perfect(coco: dict, category_ids) -> dict[int, Detections]:
    """Every ground-truth box detected exactly, score 1: mAP 1 on any subset with ground truth."""
    return noisy(coco, category_ids, seed=0, hit_rate=1.0, jitter=0.0, false_positives=0, wrong_label=0.0)


def noisy(
    coco: dict,
    category_ids,
    seed: int,
    hit_rate: float = 0.8,
    jitter: float = 0.15,
    false_positives: int = 3,
    wrong_label: float = 0.1,
    score_step: float | None = None,
) -> dict[int, Detections]:
    """A seeded imperfect detector: each box found with probability `hit_rate`, its corners moved by
    up to `jitter` of its size (a spread of IoUs across the thresholds), a wrong label with
    probability `wrong_label`, plus up to `false_positives` random boxes per image. Scores are
    uniform in (0, 1), rounded to multiples of `score_step` when given (ties on purpose)."""
    rng = np.random.default_rng(seed)
    label_of = {int(c): i for i, c in enumerate(category_ids)}
    by_image: dict[int, list] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    out = {}
    for image in coco["images"]:
        boxes, labels = [], []
        for annotation in by_image[image["id"]]:
            if rng.random() >= hit_rate:
                continue
            x, y, w, h = annotation["bbox"]
            move = rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
            boxes.append([x + move[0], y + move[1], x + w + move[2], y + h + move[3]])
            label = label_of[annotation["category_id"]]
            if rng.random() < wrong_label:
                label = int(rng.integers(len(label_of)))
            labels.append(label)
        for _ in range(int(rng.integers(0, false_positives + 1))):
            x0, y0 = rng.uniform(0, 0.8 * image["width"]), rng.uniform(0, 0.8 * image["height"])
            size = rng.uniform(8, 40)
            boxes.append([x0, y0, min(x0 + size, image["width"]), min(y0 + size, image["height"])])
            labels.append(int(rng.integers(len(label_of))))
        scores = rng.uniform(0.01, 1.0, len(boxes))
        if score_step:
            scores = np.maximum(np.round(scores / score_step) * score_step, score_step)
        out[image["id"]] = Detections(
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(scores, np.float32),
            np.asarray(labels, np.int64),
        )
    return out


def duplicated(coco: dict, detections: dict[int, Detections], weights) -> tuple[dict, dict[int, Detections]]:
    """The split with image i (in ascending id order) present `weights[i]` times, copies adjacent in
    id order, and the same detections on every copy: a bootstrap resample written out in full."""
    by_image: dict[int, list] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    images, annotations, dets = [], [], {}
    for rank, image in enumerate(sorted(coco["images"], key=lambda record: record["id"])):
        for copy in range(int(weights[rank])):
            new_id = (rank + 1) * 1000 + copy
            images.append({**image, "id": new_id})
            for annotation in by_image[image["id"]]:
                annotations.append({**annotation, "id": len(annotations) + 1, "image_id": new_id})
            dets[new_id] = detections[image["id"]]
    return {**coco, "images": images, "annotations": annotations}, dets
