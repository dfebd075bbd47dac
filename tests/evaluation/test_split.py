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


@pytest.mark.parametrize("declared", [("100", "80"), (100.5, 80), (100, None)])
def test_a_declared_size_that_is_not_two_whole_numbers_is_refused(tmp_path, declared):
    split_dir = _split(tmp_path, [], size=(100, 80), declared=declared)
    with pytest.raises(EvalSplitError, match=r"img.png' has width .* as whole numbers \(this image is 100×80"):
        load_eval_split(split_dir)


def test_a_size_written_as_whole_floats_is_read_as_integers(tmp_path):
    split_dir = _split(
        tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}], declared=(100.0, 80.0)
    )
    record = load_eval_split(split_dir).coco["images"][0]
    assert (record["width"], record["height"]) == (100, 80) and type(record["width"]) is int, record


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


def _images_split(tmp_path: Path, boxes: list[list[dict]], conditions=None) -> Path:
    """Images img0.png… (100×80 grey), two categories, `boxes[i]` the annotations of image i (ids as given)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (100, 80), (90, 90, 90)).save(buffer, "PNG")
    images, annotations = [], []
    for i, those in enumerate(boxes):
        (tmp_path / "images" / f"img{i}.png").write_bytes(buffer.getvalue())
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": 100, "height": 80})
        if conditions:
            images[-1]["condition"] = conditions[i]
        annotations += [{"image_id": i + 1, "iscrowd": 0, **a} for a in those]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path


def _truth_as_detections(split) -> dict[int, Detections]:
    found: dict[int, Detections] = {}
    for image in split.coco["images"]:
        mine = [a for a in split.coco["annotations"] if a["image_id"] == image["id"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in mine)], np.float32)
        labels = np.array([split.category_ids.index(a["category_id"]) for a in mine], np.int64)
        found[image["id"]] = Detections(boxes.reshape(-1, 4), np.ones(len(mine), np.float32), labels)
    return found


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param([[1, 2], [1, 2], [1, 2]], id="merged exports, ids restarting at 1"),
        pytest.param([[0, 1], [2, 3], [4, 5]], id="ids from 0, as Roboflow writes them"),
        pytest.param([[7, 7], [7, 7], [7, 7]], id="one id for every box"),
    ],
)
def test_annotation_ids_that_repeat_or_start_at_0_do_not_change_map(tmp_path, ids):
    # given three images with two boxes each, whose annotation ids repeat or include 0
    places = [[10, 10, 30, 20], [50, 40, 30, 30]]
    boxes = [
        [{"id": number, "category_id": 1 + j, "bbox": places[j]} for j, number in enumerate(image)] for image in ids
    ]
    split = load_eval_split(_images_split(tmp_path, boxes))
    # when a detector finds exactly the ground truth, then mAP is 1.0, as with ids 1…6
    result = coco_map(split.coco, _truth_as_detections(split), split.category_ids)
    assert result.map == pytest.approx(1.0), f"ids {ids}: mAP {result.map}"
    assert sorted(a["id"] for a in split.coco["annotations"]) == list(range(1, 7)), "scored under ids 1…N"


@pytest.mark.parametrize(
    "boxes",
    [
        pytest.param([[], []], id="no annotations"),
        pytest.param([[{"id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "iscrowd": 1}], []], id="crowd boxes only"),
        pytest.param([[{"id": 1, "category_id": 1, "bbox": [200, 1, 9, 9]}], []], id="boxes outside the image only"),
    ],
)
def test_a_split_without_ground_truth_boxes_is_refused(tmp_path, boxes):
    # mAP without ground truth is undefined; 0.0 beside 0.0 would read as "INT8 loses nothing"
    with pytest.raises(EvalSplitError, match=r"annotations.json: it holds no ground-truth boxes.*dataset_dir"):
        load_eval_split(_images_split(tmp_path, boxes))


def test_a_condition_or_class_without_ground_truth_has_no_map_not_zero(tmp_path):
    # given a labelled "day" image (category a only) and an unlabelled "fog" image
    day = [{"id": 1, "category_id": 1, "bbox": [10, 10, 30, 20]}]
    split = load_eval_split(_images_split(tmp_path, [day, []], conditions=["day", "fog"]))
    # when scored with a perfect detector, and with one that finds nothing
    perfect = coco_map(split.coco, _truth_as_detections(split), split.category_ids)
    empty = {i: Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0)) for i in (1, 2)}
    nothing = coco_map(split.coco, empty, split.category_ids)
    # then fog and class b have no mAP (NaN), in both cases, while day and class a are scored
    for result, expected in ((perfect, 1.0), (nothing, 0.0)):
        assert result.per_condition["day"] == pytest.approx(expected) and np.isnan(result.per_condition["fog"]), (
            result.per_condition
        )
        assert result.per_class["a"] == pytest.approx(expected) and np.isnan(result.per_class["b"]), result.per_class
