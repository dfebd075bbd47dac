"""The evaluator: known answers for perfect, empty and partial predictions, broken down by condition."""

import numpy as np
import pytest

from tasks.detection.postprocess import Detections
from tasks.evaluation.coco import coco_map

pytestmark = pytest.mark.unit

CLASSES = ["scratch", "dent", "crack", "contamination"]
CATEGORY_IDS = (1, 2, 3, 4)  # label i → category id i + 1, the split's sorted ids


@pytest.fixture
def coco():
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 192, "height": 192, "condition": "normal"},
        {"id": 2, "file_name": "b.jpg", "width": 192, "height": 192, "condition": "normal"},
        {"id": 3, "file_name": "c.jpg", "width": 192, "height": 192, "condition": "low_light"},
    ]
    boxes = [(1, 1, [10, 10, 30, 20]), (1, 2, [80, 90, 20, 22]), (2, 3, [5, 100, 40, 40]), (3, 4, [60, 60, 25, 30])]
    annotations = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
        for i, (img, cat, bbox) in enumerate(boxes)
    ]
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _ground_truth_as_detections(coco, keep=lambda ann: True):
    detections = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        if keep(ann):
            detections[ann["image_id"]].append(ann)
    out = {}
    for image_id, anns in detections.items():
        xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.asarray([a["category_id"] - 1 for a in anns], np.int64)
        out[image_id] = Detections(boxes, np.ones(len(anns), np.float32), labels)
    return out


def test_perfect_predictions_score_one_everywhere(coco):
    # given the ground truth fed back as detections, then every mAP is 1.0
    result = coco_map(coco, _ground_truth_as_detections(coco), CATEGORY_IDS)
    assert result.map == pytest.approx(1.0), f"overall mAP {result.map}"
    assert result.map50 == pytest.approx(1.0), f"mAP@.5 {result.map50}"
    assert all(v == pytest.approx(1.0) for v in result.per_class.values()), f"per class {result.per_class}"
    assert set(result.per_condition) == {"normal", "low_light"}, "one entry per condition present"
    assert all(v == pytest.approx(1.0) for v in result.per_condition.values()), f"{result.per_condition}"


def test_no_predictions_score_zero(coco):
    result = coco_map(coco, {}, CATEGORY_IDS)
    assert result.map == 0.0 and result.map50 == 0.0, f"empty predictions gave {result.map}, {result.map50}"
    assert all(v == 0.0 for v in result.per_condition.values()), f"{result.per_condition}"


def test_missing_one_condition_shows_in_its_breakdown_only(coco):
    # given perfect detections except on the low_light image, then only low_light drops to 0
    detections = _ground_truth_as_detections(coco, keep=lambda ann: ann["image_id"] != 3)
    result = coco_map(coco, detections, CATEGORY_IDS)
    assert result.per_condition["normal"] == pytest.approx(1.0), f"{result.per_condition}"
    assert result.per_condition["low_light"] == 0.0, f"{result.per_condition}"
    assert result.per_class["contamination"] == 0.0, f"{result.per_class}"
    assert result.map == pytest.approx(0.75), "3 of 4 classes perfect, one missed entirely"
