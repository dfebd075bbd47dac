"""COCO categories by id, never by position: any id layout scores right, and mismatches are refused.

Each split has one ground-truth box per class and the detections are those boxes, labelled
as a detector trained with the split's mapping would label them, so every right answer is 1.0.
"""

import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from tasks.config import EvaluationConfig
from tasks.detection.labels import Categories, CategoryMapError, resolve_category_ids, split_categories
from tasks.detection.postprocess import Detections
from tasks.evaluation.coco import coco_map
from tasks.evaluation.split import load_eval_split

pytestmark = pytest.mark.unit


def _coco(ids: list[int], names: list[str] | None = None) -> dict:
    """One 192-px image with one 30×30 box per category, categories listed in the given order."""
    names = names or [f"class{i}" for i in ids]
    annotations = [
        {"id": n + 1, "image_id": 1, "category_id": cat, "bbox": [10 + 40 * n, 20, 30, 30], "area": 900, "iscrowd": 0}
        for n, cat in enumerate(ids)
    ]
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 192, "height": 192, "condition": "normal"}],
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for i, name in zip(ids, names, strict=True)],
    }


def _detections(coco: dict, label_of: dict[int, int], drop: frozenset[int] = frozenset()) -> dict[int, Detections]:
    """The ground-truth boxes as detections, category c labelled `label_of[c]`, categories in `drop` missed."""
    kept = [a for a in coco["annotations"] if a["category_id"] not in drop]
    xywh = np.asarray([a["bbox"] for a in kept], np.float32).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    labels = np.asarray([label_of[a["category_id"]] for a in kept], np.int64)
    return {1: Detections(boxes, np.ones(len(kept), np.float32), labels)}


def _trained_labels(category_ids: tuple[int, ...]) -> dict[int, int]:
    """How a detector trained with this mapping labels each category."""
    return {cat: label for label, cat in enumerate(category_ids)}


def _write_split(directory, coco: dict):
    (directory / "images").mkdir()
    png = io.BytesIO()
    Image.fromarray(np.full((192, 192, 3), 90, np.uint8)).save(png, format="PNG")
    for record in coco["images"]:
        (directory / "images" / record["file_name"]).write_bytes(png.getvalue())
    (directory / "annotations.json").write_text(json.dumps(coco))
    return directory


LAYOUTS = {
    "sparse ids 1,3,7,9": [1, 3, 7, 9],
    "zero-based ids 0-3 (YOLO converters)": [0, 1, 2, 3],
    "unsorted in the JSON 4,2,3,1": [4, 2, 3, 1],
    "gaps 5,12,40, three classes": [5, 12, 40],
    "the demo's ids 1-4": [1, 2, 3, 4],
}


@pytest.mark.parametrize("ids", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_every_category_id_layout_scores_perfect_detections_as_one(tmp_path, ids):
    # given a split with these category ids, loaded as the flows load it, and detections = its ground truth
    split = load_eval_split(_write_split(tmp_path, _coco(ids)), num_classes=len(ids))
    result = coco_map(split.coco, _detections(split.coco, _trained_labels(split.category_ids)), split.category_ids)
    # then mAP and every per-class AP are 1.0 (before: 0.250 for 1,3,7,9 and 0.000 for 0-3)
    assert result.map == pytest.approx(1.0), f"{ids}: mAP {result.map}, want 1.0"
    assert result.map50 == pytest.approx(1.0), f"{ids}: mAP@.5 {result.map50}, want 1.0"
    assert set(result.per_class) == {f"class{i}" for i in ids}, f"one per-class entry per category: {result.per_class}"
    assert all(ap == pytest.approx(1.0) for ap in result.per_class.values()), f"{ids}: per class {result.per_class}"


def test_default_mapping_is_the_sorted_category_ids():
    # the demo's categories 1..4 keep today's labels exactly: label i → id i + 1
    demo = resolve_category_ids(list(split_categories(_coco([1, 2, 3, 4]), "demo")), "demo", num_classes=4)
    assert demo == (1, 2, 3, 4), f"demo mapping {demo} must stay label i → id i + 1"
    unsorted = resolve_category_ids(list(split_categories(_coco([4, 2, 3, 1]), "x")), "x", num_classes=4)
    assert unsorted == (1, 2, 3, 4), f"mapping {unsorted}: sorted ids, whatever the JSON order"


def test_per_class_ap_is_read_by_category_id_not_json_position():
    # given categories listed 4,2,3,1 and the class with id 4 ("scratch", listed first) missed entirely
    coco = _coco([4, 2, 3, 1], ["scratch", "dent", "crack", "contamination"])
    ids = (1, 2, 3, 4)
    result = coco_map(coco, _detections(coco, _trained_labels(ids), drop=frozenset({4})), ids)
    # then the zero is scratch's, the others are perfect (before: "contamination", id 1, got the 0)
    assert result.per_class["scratch"] == 0.0, f"the missed class is scratch (id 4): {result.per_class}"
    others = {name: ap for name, ap in result.per_class.items() if name != "scratch"}
    assert all(ap == pytest.approx(1.0) for ap in others.values()), f"the other classes are perfect: {others}"
    assert result.map == pytest.approx(0.75), f"3 of 4 classes perfect: mAP {result.map}"


def test_label_map_override_reorders_labels(tmp_path):
    # given a detector whose label 0 is category 9, 1 is 7, 2 is 3, 3 is 1 (trained elsewhere, reversed)
    coco = _coco([1, 3, 7, 9], ["scratch", "dent", "crack", "contamination"])
    reversed_ids = (9, 7, 3, 1)
    detections = _detections(coco, _trained_labels(reversed_ids))
    directory = _write_split(tmp_path, coco)
    # when evaluation.label_map says so, then every class is perfect
    split = load_eval_split(directory, num_classes=4, label_map=list(reversed_ids))
    assert split.category_ids == reversed_ids, f"the split carries the override: {split.category_ids}"
    mapped = coco_map(split.coco, detections, split.category_ids)
    assert mapped.map == pytest.approx(1.0), f"with the override: mAP {mapped.map}, want 1.0"
    assert all(ap == pytest.approx(1.0) for ap in mapped.per_class.values()), f"per class {mapped.per_class}"
    # and the default mapping on the same detections is not silently equal: the mapping is what decides
    default = load_eval_split(directory, num_classes=4)
    unmapped = coco_map(default.coco, detections, default.category_ids)
    assert unmapped.map == pytest.approx(0.0), f"reversed labels under the default mapping: mAP {unmapped.map}"


def test_class_count_mismatch_names_the_file_and_the_ids_found(tmp_path):
    directory = _write_split(tmp_path, _coco([1, 3, 7, 9]))
    with pytest.raises(CategoryMapError) as refused:
        load_eval_split(directory, num_classes=3)
    message = str(refused.value)
    assert str(directory / "annotations.json") in message, f"names the file: {message}"
    assert "[1, 3, 7, 9]" in message, f"names the ids found: {message}"
    assert "detector.num_classes" in message, f"names the setting to change: {message}"


@pytest.mark.parametrize(
    ("label_map", "expected"),
    [
        ([1, 3, 7, 8], "names category ids [8] that"),
        ([1, 3, 7], "has 3 entries, but detector.num_classes is 4"),
        ([1, 3, 3, 7], "repeats category ids [3]"),
    ],
    ids=["unknown id", "wrong length", "repeated id"],
)
def test_bad_label_map_is_refused_naming_it_and_the_ids_found(tmp_path, label_map, expected):
    directory = _write_split(tmp_path, _coco([1, 3, 7, 9]))
    with pytest.raises(CategoryMapError) as refused:
        load_eval_split(directory, num_classes=4, label_map=label_map)
    message = str(refused.value)
    assert expected in message, f"says what is wrong ({expected!r}): {message}"
    assert "evaluation.label_map" in message and "[1, 3, 7, 9]" in message, f"names setting and ids: {message}"


def test_label_map_leaving_a_category_without_a_label_is_refused():
    # without a detector class count (tests, benches), the map must still cover every category
    with pytest.raises(CategoryMapError, match=r"leaves categories \[9\]") as refused:
        resolve_category_ids([1, 3, 7, 9], "split.json", label_map=[1, 3, 7])
    assert "split.json" in str(refused.value), f"names the file: {refused.value}"


@pytest.mark.parametrize(
    "parents",
    [
        pytest.param([(0, "objects")], id="Roboflow's parent category id 0"),
        pytest.param([(0, "background"), (99, "unused")], id="two categories without boxes"),
    ],
)
def test_categories_without_boxes_may_be_left_out_of_the_label_map(tmp_path, parents):
    # given a split whose categories also list ones that hold no box (an export's parent or unused category)
    coco = _coco([1, 2, 3, 4], ["scratch", "dent", "crack", "contamination"])
    coco["categories"] = [{"id": i, "name": name} for i, name in parents] + coco["categories"]
    directory = _write_split(tmp_path, coco)
    # when loaded for a 4-class detector without a label_map, then the refusal names the label_map that fits
    with pytest.raises(CategoryMapError) as refused:
        load_eval_split(directory, num_classes=4)
    empty = sorted(i for i, _ in parents)
    assert f"categories {empty} hold no boxes" in str(refused.value), str(refused.value)
    assert "set evaluation.label_map to [1, 2, 3, 4]" in str(refused.value), str(refused.value)
    # and with that label_map the split loads and a detector finding every box scores 1.0
    split = load_eval_split(directory, num_classes=4, label_map=[1, 2, 3, 4])
    result = coco_map(split.coco, _detections(split.coco, _trained_labels(split.category_ids)), split.category_ids)
    assert result.map == pytest.approx(1.0), f"mAP {result.map}"
    assert all(np.isnan(result.per_class[name]) for _, name in parents), f"no boxes, no AP: {result.per_class}"
    # but a category that holds boxes can never be left out
    with pytest.raises(CategoryMapError, match=r"leaves categories \[4\]"):
        resolve_category_ids(
            [i for i, _ in parents] + [1, 2, 3, 4], "split.json", label_map=[1, 2, 3], annotated={1, 2, 3, 4}
        )


def test_config_refuses_a_label_map_that_repeats_an_id():
    with pytest.raises(ValidationError, match=r"category ids \[3\] repeat") as refused:
        EvaluationConfig(label_map=[1, 3, 3, 7])
    assert "label_map" in str(refused.value), f"names the key: {refused.value}"


def test_annotations_of_an_unlisted_category_are_refused(tmp_path):
    # COCOeval would silently drop these boxes from the ground truth and inflate mAP
    coco = _coco([1, 2, 3, 4])
    coco["annotations"][0]["category_id"] = 5
    directory = _write_split(tmp_path, coco)
    with pytest.raises(CategoryMapError, match=r"category_id \[5\]") as refused:
        load_eval_split(directory)
    assert str(directory / "annotations.json") in str(refused.value), f"names the file: {refused.value}"


def test_repeated_category_names_are_refused(tmp_path):
    # per-class AP is keyed by name: two categories named alike would share one figure
    directory = _write_split(tmp_path, _coco([1, 2, 3, 4], ["dent", "dent", "crack", "scratch"]))
    with pytest.raises(CategoryMapError, match=r"\['dent'\]") as refused:
        load_eval_split(directory)
    assert "distinct name" in str(refused.value), f"says the fix: {refused.value}"


def test_a_detection_label_outside_the_mapping_is_refused():
    coco = _coco([1, 2, 3, 4])
    detections = _detections(coco, {1: 0, 2: 1, 3: 2, 4: 4})
    with pytest.raises(CategoryMapError, match=r"labels \[4\]") as refused:
        coco_map(coco, detections, (1, 2, 3, 4))
    assert "detector.num_classes" in str(refused.value), f"points at the class count: {refused.value}"


def test_a_mapping_naming_a_category_the_ground_truth_lacks_is_refused():
    coco = _coco([1, 2, 3, 4])
    with pytest.raises(CategoryMapError, match=r"category ids \[0\]") as refused:
        coco_map(coco, _detections(coco, _trained_labels((1, 2, 3, 4))), (0, 1, 2, 3))
    assert "load_eval_split" in str(refused.value), f"says the fix: {refused.value}"


def test_a_mapping_giving_one_category_to_two_labels_is_refused():
    coco = _coco([1, 2, 3, 4])
    with pytest.raises(CategoryMapError, match=r"\[1, 2, 2, 4\] gives one category to several labels"):
        coco_map(coco, _detections(coco, _trained_labels((1, 2, 3, 4))), (1, 2, 2, 4))


def test_cached_evaluations_are_keyed_by_the_label_mapping_when_overridden(tmp_path):
    directory = _write_split(tmp_path, _coco([1, 3, 7, 9]))
    default = load_eval_split(directory, num_classes=4)
    overridden = load_eval_split(directory, num_classes=4, label_map=[9, 7, 3, 1])
    # the default key is unchanged from before label maps, so existing FP16 caches stay valid
    assert default.cache_key == f"{directory.name}-{default.digest}", f"default key {default.cache_key}"
    assert overridden.cache_key != default.cache_key, "an FP16 mAP cached under one mapping is never reused for another"
    assert default.head(1).category_ids == default.category_ids, "head() keeps the mapping"


def test_categories_json_round_trips_the_label_mapping_with_names(tmp_path):
    # given a split with sparse ids listed out of order, and a label_map that reorders them
    coco = {"categories": [{"id": 90, "name": "truck"}, {"id": 3, "name": "car"}, {"id": 17, "name": "cat"}]}
    categories = Categories.of_split(coco, resolve_category_ids([90, 3, 17], "split", 3, label_map=[17, 90, 3]))
    # when written and read back
    back = Categories.read(categories.write(tmp_path / "ir" / "categories.json"))
    # then label i means label_map[i], with its own name
    assert back == categories, f"round trip: {back} != {categories}"
    assert [back.describe(i) for i in range(3)] == [
        {"category_id": 17, "category": "cat"},
        {"category_id": 90, "category": "truck"},
        {"category_id": 3, "category": "car"},
    ], back
    with pytest.raises(CategoryMapError, match=r"label 3, but categories\.json names labels 0–2"):
        back.describe(3)


@pytest.mark.parametrize(
    "entries",
    [
        [{"label": 1, "id": 1, "name": "a"}],
        [{"label": 0, "id": 1, "name": "a"}, {"label": 1, "id": 1, "name": "b"}],
        [{"label": 0, "id": "1", "name": "a"}],
        {"0": "a"},
        [],
    ],
    ids=["labels-not-from-0", "repeated-id", "string-id", "not-a-list", "empty"],
)
def test_a_malformed_categories_json_is_refused_naming_the_file(tmp_path, entries):
    path = tmp_path / "categories.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(CategoryMapError, match=re.escape(str(path))):
        Categories.read(path)
