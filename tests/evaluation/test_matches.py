"""Per-image matching and weighted re-accumulation against faster-coco-eval itself: all-ones
weights give the library's mAP@[.5:.95], a subset's zero-one weights its per-condition mAP, and
a resample's multiplicities the mAP of that resample written out as a split with repeated images."""

import numpy as np
import pytest

from tasks.detection.postprocess import Detections
from tasks.evaluation.bootstrap import resample_weights
from tasks.evaluation.coco import coco_map
from tasks.evaluation.matches import ImageMatches, MatchesError, image_matches, weighted_map
from tests.evaluation.detections import duplicated, noisy

pytestmark = pytest.mark.unit

EXACT = 1e-9


@pytest.fixture(scope="module")
def split(eval_split):
    """The session's 24-frame labelled split: its COCO dict and label mapping."""
    return eval_split.coco, eval_split.category_ids


def _ones(matches: ImageMatches) -> float:
    return float(weighted_map(matches, np.ones(len(matches), np.int64))[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_ones_reproduce_faster_coco_eval_including_tied_scores(split, seed):
    # given an imperfect detector whose scores tie often (multiples of 0.05), so COCOeval's tie order matters
    coco, category_ids = split
    detections = noisy(coco, category_ids, seed=seed, score_step=0.05)
    # when
    expected = coco_map(coco, detections, category_ids)
    matches = image_matches(coco, detections, category_ids)
    # then
    assert 0.05 < expected.map < 0.95, f"the case must be neither trivial nor hopeless: mAP {expected.map}"
    assert abs(_ones(matches) - expected.map) < EXACT, f"weighted {_ones(matches)} vs library {expected.map}"


def test_zero_one_weights_give_each_condition_s_map(split):
    coco, category_ids = split
    detections = noisy(coco, category_ids, seed=3)
    expected = coco_map(coco, detections, category_ids).per_condition
    matches = image_matches(coco, detections, category_ids)
    condition_of = {image["id"]: image["condition"] for image in coco["images"]}
    assert len(expected) >= 3, f"the split should mix conditions: {expected}"
    for condition, value in expected.items():
        mask = np.array([condition_of[int(i)] == condition for i in matches.image_ids], np.int64)
        got = float(weighted_map(matches, mask)[0])
        assert abs(got - value) < EXACT, f"{condition}: weighted {got} vs library {value}"


def test_resample_multiplicities_equal_the_split_with_repeated_images(split):
    # given continuous scores (no ties), a resample counted by weights is the split with its images repeated
    coco, category_ids = split
    detections = noisy(coco, category_ids, seed=4)
    matches = image_matches(coco, detections, category_ids)
    weights = resample_weights(len(matches), resamples=4, seed=11)
    got = weighted_map(matches, weights)
    for row, value in zip(weights, got, strict=True):
        assert row.max() >= 2 and (row == 0).any(), f"a resample repeats some images and drops others: {row}"
        expected = coco_map(*duplicated(coco, detections, row), category_ids, breakdown=False).map
        assert abs(value - expected) < EXACT, f"weighted {value} vs the written-out resample {expected}"


def test_crowd_boxes_are_ignored_as_cocoeval_ignores_them():
    # given a crowd box that a confident detection overlaps, and a regular box found late
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 200}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [120, 120, 40, 40], "area": 1600, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "dent"}],
    }
    boxes = np.array([[12, 12, 58, 58], [121, 119, 160, 161], [0, 150, 20, 170]], np.float32)
    detections = {1: Detections(boxes, np.array([0.9, 0.5, 0.7], np.float32), np.zeros(3, np.int64))}
    matches = image_matches(coco, detections, [1])
    expected = coco_map(coco, detections, [1]).map
    assert matches.gt_counts.tolist() == [[1]], f"only the regular box counts: {matches.gt_counts}"
    assert not matches.tp[:, 0].any() and not matches.fp[:, 0].any(), "the crowd match is neither TP nor FP"
    assert abs(_ones(matches) - expected) < EXACT, f"weighted {_ones(matches)} vs library {expected}"


def test_no_detections_score_zero_like_the_library(split):
    coco, category_ids = split
    matches = image_matches(coco, {}, category_ids)
    assert matches.score.size == 0 and _ones(matches) == 0.0, "nothing detected is mAP 0"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda n: np.ones(n + 1), "one weight per image"),
        (lambda n: -np.ones(n), "non-negative"),
        (lambda n: np.full(n, 0.5), "integers"),
    ],
    ids=["shape", "negative", "fractional"],
)
def test_weights_must_be_whole_non_negative_and_one_per_image(split, make, problem):
    coco, category_ids = split
    matches = image_matches(coco, noisy(coco, category_ids, seed=5), category_ids)
    with pytest.raises(MatchesError, match=problem):
        weighted_map(matches, make(len(matches)))


def test_save_and_load_round_trip_and_a_bad_file_is_named(split, tmp_path):
    coco, category_ids = split
    matches = image_matches(coco, noisy(coco, category_ids, seed=6), category_ids)
    loaded = ImageMatches.load(matches.save(tmp_path / "m.npz"))
    assert loaded.same_split(matches) and _ones(loaded) == _ones(matches), "a reloaded file scores the same"
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(MatchesError, match=r"bad\.npz"):
        ImageMatches.load(tmp_path / "bad.npz")
