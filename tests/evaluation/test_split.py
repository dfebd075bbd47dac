"""Loading a COCO split as labelling tools write them: what is fixed, what is refused, and that
nothing lowers mAP unseen."""

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.detection.postprocess import Detections
from tasks.evaluation.coco import coco_map
from tasks.evaluation.split import EvalSplitError, load_eval_split

pytestmark = pytest.mark.unit


def _split(tmp_path: Path, annotations: list[dict], size=(100, 80), declared=None, stored=None) -> Path:
    """One image `img.png` (`stored` bytes, else a grey `size` PNG), one category, the given boxes."""
    (tmp_path / "images").mkdir(exist_ok=True)
    data = stored
    if data is None:
        buffer = io.BytesIO()
        Image.new("RGB", size, (90, 90, 90)).save(buffer, "PNG")
        data = buffer.getvalue()
    (tmp_path / "images" / "img.png").write_bytes(data)
    width, height = declared or size
    coco = {
        "images": [{"id": 1, "file_name": "img.png", "width": width, "height": height}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "dent"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path


def _perfect(split) -> dict[int, Detections]:
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in split.coco["annotations"])])
    return {
        1: Detections(boxes.astype(np.float32).reshape(-1, 4), np.ones(len(boxes), np.float32), np.zeros(len(boxes)))
    }


def test_boxes_reaching_outside_or_without_area_do_not_lower_map_unseen(tmp_path, caplog):
    # given a good box, one sticking out on the left, one wholly outside, and one of zero width
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [-20, 40, 50, 20]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [150, 10, 20, 20]},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [60, 60, 0, 10]},
    ]
    # when loaded
    with caplog.at_level(logging.WARNING, logger="tasks.evaluation.split"):
        split = load_eval_split(_split(tmp_path, annotations))
    # then the box inside the image is clipped, the two without area are dropped and named,
    # and a detector that finds every visible box scores 1.0
    boxes = {a["id"]: a["bbox"] for a in split.coco["annotations"]}
    assert boxes == {1: [10, 10, 30, 20], 2: [0.0, 40.0, 30.0, 20.0]}, f"clipped and dropped: {boxes}"
    assert any("2 annotation(s)" in r.getMessage() and "[3, 4]" in r.getMessage() for r in caplog.records), (
        "the dropped boxes are reported with their ids"
    )
    assert coco_map(split.coco, _perfect(split), split.category_ids).map == pytest.approx(1.0), "perfect is 1.0"


def test_annotations_made_on_the_stored_frame_of_a_rotated_photo_are_refused(tmp_path):
    # given a portrait stored sideways (EXIF 6) whose tool recorded the stored 120×60 size
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (120, 60), (90, 90, 90)).save(buffer, "JPEG", exif=exif.tobytes())
    box = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 100, 20]}]
    split_dir = _split(tmp_path, box, size=(120, 60), declared=(120, 60), stored=buffer.getvalue())
    # then loading names the file, both frames and the fix
    with pytest.raises(EvalSplitError, match=r"img.png.*declared 120×60 but shows 60×120 upright.*stored frame"):
        load_eval_split(split_dir)


def test_a_declared_size_that_is_not_the_images_is_refused(tmp_path):
    split_dir = _split(tmp_path, [], size=(100, 80), declared=(640, 480))
    with pytest.raises(EvalSplitError, match=r"declared 640×480 but is 100×80"):
        load_eval_split(split_dir)


def test_a_missing_size_is_taken_from_the_image(tmp_path):
    split_dir = _split(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    coco = json.loads((split_dir / "annotations.json").read_text())
    del coco["images"][0]["width"], coco["images"][0]["height"]
    (split_dir / "annotations.json").write_text(json.dumps(coco))
    record = load_eval_split(split_dir).coco["images"][0]
    assert (record["width"], record["height"]) == (100, 80), record


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (lambda c: "{not json", r"is not valid JSON"),
        (lambda c: {k: v for k, v in c.items() if k != "annotations"}, r"has no 'annotations' list"),
        (lambda c: {**c, "images": [{**c["images"][0], "id": "img1"}]}, r"needs an integer 'id' and a 'file_name'"),
        (lambda c: {**c, "images": c["images"] * 2}, r"lists image ids \[1\] more than once"),
        (lambda c: {**c, "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}]}, r"integer 'id'"),
        (
            lambda c: {**c, "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2]}]},
            r"image_id 7",
        ),
        (lambda c: {**c, "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": "[1,1,2,2]"}]}, r"'bbox'"),
    ],
)
def test_a_malformed_coco_file_is_refused_naming_the_file_and_field(tmp_path, broken, message):
    split_dir = _split(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    coco = json.loads((split_dir / "annotations.json").read_text())
    changed = broken(coco)
    (split_dir / "annotations.json").write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(EvalSplitError, match=message) as caught:
        load_eval_split(split_dir)
    assert "annotations.json" in str(caught.value), f"the file is named: {caught.value}"


def test_an_image_that_does_not_decode_is_named(tmp_path):
    split_dir = _split(tmp_path, [], stored=b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(EvalSplitError, match=r"images/img.png: "):
        load_eval_split(split_dir)
