"""The weighted re-accumulation on a real evaluation: the demo detector's FP16 IR on real synthetic
frames, scored by faster-coco-eval and re-accumulated from its per-image matching."""

import json

import numpy as np
import pytest

from tasks.config import EvaluationConfig
from tasks.detection.runtime import detect, load_detector
from tasks.evaluation.bootstrap import resample_weights
from tasks.evaluation.coco import coco_map
from tasks.evaluation.evaluate import evaluate_ir, evaluate_ir_cached
from tasks.evaluation.matches import weighted_map
from tests.evaluation.detections import duplicated
from tests.support import requires_demo_detector

pytestmark = [pytest.mark.integration, requires_demo_detector]

EXACT = 1e-9


@pytest.fixture(scope="module")
def evaluated(fp16_ir, eval_split):
    """The FP16 IR's detections on the 24-frame split and its evaluation (with matches)."""
    detector = load_detector(fp16_ir)
    found = detect(detector, eval_split.images)
    detections = dict(zip(eval_split.image_ids, found, strict=True))
    return detections, evaluate_ir(fp16_ir, eval_split, EvaluationConfig(), measure_speed=False)


def test_every_image_weighted_once_reproduces_the_library_map(evaluated, eval_split):
    _, result = evaluated
    ones = float(weighted_map(result.matches, np.ones(len(eval_split), np.int64))[0])
    assert 0.2 < result.map < 0.95, f"a real, imperfect evaluation: mAP {result.map}"
    assert abs(ones - result.map) < EXACT, f"re-accumulated {ones} vs faster-coco-eval {result.map}"
    condition_of = {image["id"]: image["condition"] for image in eval_split.coco["images"]}
    for condition, value in result.per_condition.items():
        mask = np.array([condition_of[int(i)] == condition for i in result.matches.image_ids], np.int64)
        got = float(weighted_map(result.matches, mask)[0])
        assert abs(got - value) < EXACT, f"{condition}: re-accumulated {got} vs faster-coco-eval {value}"


def test_resamples_equal_the_library_on_the_resampled_split(evaluated, eval_split):
    detections, result = evaluated
    weights = resample_weights(len(eval_split), resamples=3, seed=2)
    for row, got in zip(weights, weighted_map(result.matches, weights), strict=True):
        expected = coco_map(*duplicated(eval_split.coco, detections, row), eval_split.category_ids, False).map
        assert abs(got - expected) < EXACT, f"resample {row.tolist()}: re-accumulated {got} vs library {expected}"


def test_the_cached_fp16_evaluation_keeps_its_matches(fp16_ir, eval_split, tmp_path):
    # given the FP16 IR copied to a fresh folder (the cache lives beside the IR)
    ir = tmp_path / fp16_ir.name
    ir.write_bytes(fp16_ir.read_bytes())
    ir.with_suffix(".bin").write_bytes(fp16_ir.with_suffix(".bin").read_bytes())
    split = eval_split.head(8)
    first = evaluate_ir_cached(ir, split, EvaluationConfig())
    cached = tmp_path / f"map-{split.cache_key}"
    assert cached.with_suffix(".npz").exists(), "the matches are cached beside the figures"
    # when read back, then the matches re-accumulate to the same mAP
    again = evaluate_ir_cached(ir, split, EvaluationConfig())
    ones = np.ones(len(split), np.int64)
    assert weighted_map(again.matches, ones)[0] == pytest.approx(first.map, abs=EXACT), "cached matches score alike"
    # and a cache written before matches were kept is evaluated again rather than served without them
    cached.with_suffix(".npz").unlink()
    stale = json.loads(cached.with_suffix(".json").read_text()) | {"map": -1.0}
    cached.with_suffix(".json").write_text(json.dumps(stale))
    rebuilt = evaluate_ir_cached(ir, split, EvaluationConfig())
    assert rebuilt.map == pytest.approx(first.map) and rebuilt.matches is not None, "an old cache is replaced"
