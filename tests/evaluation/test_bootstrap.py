"""Paired bootstrap intervals on constructed cases whose answer is known: identical models give
[0, 0]; a model that finds every box against one that finds none differs by exactly 1 on every
resample; a model better on every image gives an interval that excludes 0."""

import numpy as np
import pytest

from tasks.detection.postprocess import Detections
from tasks.evaluation.bootstrap import BootstrapError, PairedBootstrap, paired_gap_difference, resample_weights
from tasks.evaluation.coco import coco_map
from tasks.evaluation.matches import image_matches
from tests.evaluation.detections import noisy, perfect

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def split(eval_split):
    return eval_split.coco, eval_split.category_ids


@pytest.fixture(scope="module")
def fp16(split):
    """A stand-in FP16 model: the seeded imperfect detector."""
    coco, category_ids = split
    return image_matches(coco, noisy(coco, category_ids, seed=0), category_ids)


def test_resample_weights_are_seeded_draws_of_n_images():
    weights = resample_weights(30, resamples=200, seed=7)
    assert weights.shape == (200, 30), f"one row per resample, one column per image: {weights.shape}"
    assert (weights.sum(axis=1) == 30).all(), "each resample draws exactly N images"
    assert np.array_equal(weights, resample_weights(30, 200, seed=7)), "the same seed gives the same resamples"
    assert not np.array_equal(weights, resample_weights(30, 200, seed=8)), "another seed gives other resamples"
    # Each image is drawn Binomial(N, 1/N) times: mean 1 over many resamples.
    assert abs(weights.mean() - 1.0) < 1e-12 and 0.3 < (weights == 0).mean() < 0.45, "≈ e⁻¹ of images left out"


def test_identical_models_differ_by_exactly_zero(split, fp16):
    coco, category_ids = split
    same = image_matches(coco, noisy(coco, category_ids, seed=1), category_ids)
    interval = paired_gap_difference(fp16, same, same, resamples=300, seed=0)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0), f"identical models: {interval}"
    assert not interval.excludes_zero, "no difference cannot exclude zero"


def test_finding_every_box_against_none_differs_by_exactly_one_on_every_resample(split, fp16):
    # gap(none) − gap(every) = mAP(every) − mAP(none) = 1 − 0 on any resample with ground truth
    coco, category_ids = split
    every = image_matches(coco, perfect(coco, category_ids), category_ids)
    none = image_matches(coco, {}, category_ids)
    interval = paired_gap_difference(fp16, none, every, resamples=300, seed=0)
    assert interval.estimate == pytest.approx(1.0, abs=1e-12), f"estimate {interval.estimate}"
    assert (interval.low, interval.high) == pytest.approx((1.0, 1.0), abs=1e-12), f"a constant: {interval}"


def test_a_model_better_on_every_image_gives_an_interval_excluding_zero(split, fp16):
    # given A = every box found, B = the same but one box per image moved off its object (a miss and a false alarm)
    coco, category_ids = split
    good = perfect(coco, category_ids)
    worse = {}
    for image_id, det in good.items():
        boxes = det.boxes.copy()
        if len(boxes):
            boxes[0] += np.float32(60)
        worse[image_id] = Detections(boxes, det.scores, det.labels)
    a, b = image_matches(coco, good, category_ids), image_matches(coco, worse, category_ids)
    interval = paired_gap_difference(fp16, a, b, resamples=500, seed=3)
    expected = coco_map(coco, good, category_ids).map - coco_map(coco, worse, category_ids).map
    # then A's gap is smaller, the estimate is the library's difference, and the interval is below 0
    assert interval.estimate == pytest.approx(-expected, abs=1e-9), f"estimate {interval.estimate} vs {-expected}"
    assert interval.high < 0 and interval.excludes_zero, f"A better on every image: {interval}"
    assert interval.low <= interval.estimate <= interval.high, f"the estimate lies inside: {interval}"


def test_the_paired_interval_is_narrower_than_two_separate_ones(split, fp16):
    # given two noisy models that share most of their per-image behaviour (same boxes, scores nudged)
    coco, category_ids = split
    base = noisy(coco, category_ids, seed=2)
    rng = np.random.default_rng(5)
    nudged = {
        i: Detections(d.boxes, d.scores * rng.uniform(0.9, 1.1, len(d.scores)), d.labels) for i, d in base.items()
    }
    a, b = image_matches(coco, base, category_ids), image_matches(coco, nudged, category_ids)
    bootstrap = PairedBootstrap(fp16, resamples=400, seed=1)
    paired = bootstrap.mean_gap_difference(fp16, [a], [b])
    gap_a, gap_b = bootstrap.gap(fp16, a), bootstrap.gap(fp16, b)
    assert paired.high - paired.low < 0.5 * ((gap_a.high - gap_a.low) + (gap_b.high - gap_b.low)), (
        f"pairing removes shared image variation: paired {paired}, separate {gap_a} and {gap_b}"
    )
    assert paired.estimate == pytest.approx(gap_a.estimate - gap_b.estimate, abs=1e-12), "Δ = gap(A) − gap(B)"


def test_models_from_other_splits_are_refused(split, fp16):
    coco, category_ids = split
    smaller = dict(coco, images=coco["images"][:-1])
    smaller["annotations"] = [a for a in coco["annotations"] if a["image_id"] != coco["images"][-1]["id"]]
    other = image_matches(smaller, {}, category_ids)
    with pytest.raises(BootstrapError, match="same split"):
        paired_gap_difference(fp16, fp16, other, resamples=100)


def test_a_split_of_one_image_is_refused():
    with pytest.raises(BootstrapError, match="at least 2 images"):
        resample_weights(1, 100)
