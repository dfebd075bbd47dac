"""Training labels come from the same category mapping as evaluation, whatever the split's ids."""

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from tasks.config import DetectorConfig
from tasks.detection.families import build_detector
from tasks.detection.labels import CategoryMapError
from tasks.detection.postprocess import Detections
from tasks.detection.preprocess import Preprocessing
from tasks.detection.training import TrainSettings, load_split, train
from tasks.evaluation.coco import coco_map
from tasks.evaluation.split import load_eval_split

pytestmark = pytest.mark.unit

# Not 1..N: zero-based, with a gap, listed unsorted in the JSON.
IDS = [9, 0, 4, 2]
NAMES = ["scratch", "dent", "crack", "contamination"]


@pytest.fixture
def split_dir(tmp_path):
    """Two 192-px frames, each with one box of every category (COCO dict built here, PNGs written here)."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 192, "height": 192} for i in (1, 2)]
    annotations = [
        {
            "id": len(IDS) * (image - 1) + n + 1,
            "image_id": image,
            "category_id": cat,
            "bbox": [8 + 45 * n, 30 + 20 * image, 36, 40],
            "area": 36 * 40,
            "iscrowd": 0,
        }
        for image in (1, 2)
        for n, cat in enumerate(IDS)
    ]
    categories = [{"id": i, "name": name} for i, name in zip(IDS, NAMES, strict=True)]
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for record in images:
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (192, 192, 3), np.uint8)).save(png, format="PNG")
        (tmp_path / "images" / record["file_name"]).write_bytes(png.getvalue())
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path


def test_labels_follow_the_sorted_category_ids(split_dir):
    split = load_split(split_dir, Preprocessing(192), num_classes=4)
    assert split.category_ids == (0, 2, 4, 9), f"mapping {split.category_ids}: the split's ids sorted ascending"
    # category 9 is the 4th smallest id → label 3; 0 → 0; 4 → 2; 2 → 1
    assert split.labels[0].tolist() == [3, 0, 2, 1], f"labels of categories {IDS}: {split.labels[0].tolist()}"


def test_training_and_evaluation_share_one_mapping(split_dir):
    # given the same directory read as a train split and as an eval split
    train_split = load_split(split_dir, Preprocessing(192), num_classes=4)
    eval_split = load_eval_split(split_dir, num_classes=4)
    assert train_split.category_ids == eval_split.category_ids, "one mapping for both sides"
    # then the training targets, fed back as detections, score 1.0 on every class
    detections = {
        image_id: Detections(boxes, np.ones(len(labels), np.float32), labels)
        for image_id, boxes, labels in zip(train_split.image_ids, train_split.boxes, train_split.labels, strict=True)
    }
    result = coco_map(eval_split.coco, detections, eval_split.category_ids)
    assert result.map == pytest.approx(1.0), f"training targets scored as detections: mAP {result.map}, want 1.0"
    assert all(ap == pytest.approx(1.0) for ap in result.per_class.values()), f"per class {result.per_class}"


def test_a_label_map_override_reorders_training_labels(split_dir):
    split = load_split(split_dir, Preprocessing(192), num_classes=4, label_map=[9, 4, 2, 0])
    assert split.labels[0].tolist() == [0, 3, 1, 2], f"labels of categories {IDS}: {split.labels[0].tolist()}"


def test_a_split_with_another_class_count_is_refused_naming_the_file_and_ids(split_dir):
    with pytest.raises(CategoryMapError) as refused:
        load_split(split_dir, Preprocessing(192), num_classes=3)
    message = str(refused.value)
    assert str(split_dir / "annotations.json") in message, f"names the file: {message}"
    assert "[0, 2, 4, 9]" in message, f"names the ids found: {message}"


def test_a_split_whose_ids_are_not_one_to_n_trains(split_dir):
    # before: labels were category_id − 1 = 8, −1, 3, 1, outside the 4 classes of the detector
    split = load_split(split_dir, Preprocessing(192), num_classes=4)
    assert all(((lab >= 0) & (lab < 4)).all() for lab in split.labels), f"labels in 0..3: {split.labels}"
    model = build_detector(DetectorConfig(), load_checkpoint=False)
    result = train(model, split, TrainSettings(budget_s=1.0, batch_size=2, warmup_steps=1))
    assert result.steps >= 1 and math.isfinite(result.final_loss), f"training ran with finite loss: {result}"
