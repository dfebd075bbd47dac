"""The release summary's worst-conditions line: losses only, each with the eval images it rests on,
and a condition too small to rank named apart instead of topping the list."""

import pytest

from flows.release_cycle import MIN_RANKED_IMAGES, _worst_conditions

pytestmark = pytest.mark.unit


def test_a_condition_with_two_eval_images_is_not_ranked_worst():
    # given a 2-image condition with a huge gap, three real losses, a tie and a gain
    metrics = {
        "gap.map": 0.006,
        "gap.map.overexposure": 0.15,
        "eval.images.overexposure": 2,
        "gap.map.low_light": 0.0211,
        "eval.images.low_light": 87,
        "gap.map.motion_blur": 0.0104,
        "eval.images.motion_blur": 60,
        "gap.map.occlusion": 0.0031,
        "eval.images.occlusion": 40,
        "gap.map.glare": -0.0,
        "eval.images.glare": 30,
        "gap.map.clean": -0.004,
        "eval.images.clean": 200,
        "gap.map.class.bolt": 0.5,
    }
    # when the line is written
    line = _worst_conditions(metrics)
    # then the three losses come first with their counts, and the small one is named apart
    assert line.startswith("low_light +0.0211 (87 images), motion_blur +0.0104 (60 images), occlusion +0.0031"), line
    assert f"under {MIN_RANKED_IMAGES} eval images, not ranked: overexposure (2)" in line, line
    assert "glare" not in line and "clean" not in line and "-0.0000" not in line, f"no gains or ties: {line}"
    assert "bolt" not in line, f"per-class gaps are not conditions: {line}"


def test_no_loss_on_any_condition_says_so():
    line = _worst_conditions({"gap.map.clean": -0.001, "eval.images.clean": 100, "gap.map.fog": 0.00004})
    assert line == "none (INT8 loses on no condition)", line


def test_results_without_image_counts_still_rank_by_gap():
    # a cached evaluation from before image counts were recorded
    line = _worst_conditions({"gap.map.fog": 0.002, "gap.map.rain": 0.005})
    assert line == "rain +0.0050, fog +0.0020", line
