"""The shared difficulty formula (reference scorer, serving, drift): a well-exposed textured frame
is easy with no factors; darkness, saturation, sensor noise and horizontal motion blur each raise
difficulty and are named; the statistics do not depend on how the picture is passed in."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from tasks.difficulty import STAT_NAMES, ImageStatistics, assess, image_statistics

pytestmark = pytest.mark.unit

SIZE = 128


def mid_grey_scene() -> np.ndarray:
    """A well-exposed grey frame with smooth texture: mean 0.5, moderate contrast, no noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return (128 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)


def smear_horizontally(image: np.ndarray, length: int) -> np.ndarray:
    """Horizontal motion blur: a box filter of `length` pixels along each row."""
    kernel = np.ones(length) / length
    padded = np.pad(image.astype(np.float64), ((0, 0), (length, length)), mode="edge")
    rows = np.stack([np.convolve(row, kernel, mode="same") for row in padded])[:, length:-length]
    return np.clip(rows, 0, 255).astype(np.uint8)


def test_a_well_exposed_mid_grey_scene_is_easy_with_no_factors():
    assessment = assess(mid_grey_scene())
    assert assessment.factors == (), f"nothing wrong with a well-exposed scene: {assessment.factors}"
    assert assessment.difficulty == pytest.approx(0.12), f"no factor leaves the 0.12 floor: {assessment.difficulty}"
    assert assessment.statistics.brightness == pytest.approx(0.5, abs=0.01), f"mid-grey: {assessment.statistics}"


def test_a_flat_grey_frame_without_any_structure_reads_as_low_contrast():
    # given a perfectly uniform mid-grey frame (no edges at all, like dense fog)
    assessment = assess(np.full((SIZE, SIZE), 128, np.uint8))
    # then it is not "easy": zero contrast is a factor of its own
    assert assessment.factors == ("low_contrast",), f"a featureless frame is low-contrast: {assessment.factors}"
    # 0.12 + 0.68 · strongest factor (low_contrast = 1) + 0.2 · mean of the six factors (1/6)
    expected = 0.12 + 0.68 * 1.0 + 0.2 * (1.0 / 6)
    assert assessment.difficulty == pytest.approx(expected), f"formula for one saturated factor: {assessment}"


def test_a_very_dark_frame_names_low_light_and_scores_higher():
    # given the same scene at an eighth of the exposure
    easy = assess(mid_grey_scene())
    dark = assess((mid_grey_scene() * 0.12).astype(np.uint8))
    # then
    assert "low_light" in dark.factors, f"dark frame should name low_light: {dark.factors}"
    assert dark.difficulty > easy.difficulty + 0.3, f"dark {dark.difficulty:.3f} vs normal {easy.difficulty:.3f}"
    assert "low_light" not in easy.factors, f"normal exposure is not low light: {easy.factors}"


def test_a_mostly_saturated_frame_names_overexposure():
    # given the scene overexposed so that most pixels clip at white
    bright = assess(np.clip(mid_grey_scene().astype(np.int32) + 150, 0, 255).astype(np.uint8))
    assert bright.statistics.saturated > 0.5, f"precondition: mostly saturated: {bright.statistics.saturated:.2f}"
    assert "overexposure" in bright.factors, f"saturated frame should name overexposure: {bright.factors}"
    assert bright.difficulty > assess(mid_grey_scene()).difficulty + 0.3, f"overexposed is harder: {bright.difficulty}"


def test_heavy_gaussian_noise_names_sensor_noise():
    rng = np.random.default_rng(0)
    noisy = np.clip(mid_grey_scene() + rng.normal(0, 40, (SIZE, SIZE)), 0, 255).astype(np.uint8)
    assessment = assess(noisy)
    assert "sensor_noise" in assessment.factors, f"σ=40 noise should name sensor_noise: {assessment.factors}"
    assert assessment.difficulty > assess(mid_grey_scene()).difficulty + 0.3, f"noisy is harder: {assessment}"


def test_a_horizontally_smeared_frame_names_motion_blur():
    # given a fine random texture (sharp in every direction), then the same texture smeared along rows
    texture = np.random.default_rng(1).integers(30, 226, (SIZE, SIZE)).astype(np.uint8)
    sharp, blurred = assess(texture), assess(smear_horizontally(texture, 25))
    # then only the smeared one reads as motion blur: gradients survive across rows, not along them
    assert "motion_blur" not in sharp.factors, f"the unsmeared texture is not motion-blurred: {sharp.factors}"
    assert "motion_blur" in blurred.factors, f"a 25 px horizontal smear is motion blur: {blurred.factors}"
    assert blurred.statistics.anisotropy > 3.0, f"one axis much sharper than the other: {blurred.statistics}"
    assert blurred.difficulty > 0.3, f"motion blur raises difficulty: {blurred.difficulty:.3f}"


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((16, 16), np.uint8),
        np.full((16, 16), 255, np.uint8),
        np.random.default_rng(2).integers(0, 256, (16, 16, 3)).astype(np.uint8),
    ],
    ids=["black", "white", "noise"],
)
def test_difficulty_stays_in_the_unit_interval(image):
    difficulty = assess(image).difficulty
    assert 0.0 <= difficulty <= 1.0, f"difficulty out of [0, 1]: {difficulty}"


def test_image_statistics_are_the_same_for_pil_rgb_array_and_grey_array():
    # given one grey picture passed three ways
    grey = mid_grey_scene()
    rgb = np.stack([grey, grey, grey], axis=-1)
    pil = Image.fromarray(rgb)
    # when
    from_grey, from_rgb, from_pil = image_statistics(grey), image_statistics(rgb), image_statistics(pil)
    # then
    assert isinstance(from_grey, ImageStatistics), f"statistics object: {type(from_grey)}"
    assert from_rgb == from_grey, f"RGB array vs grey array differ: {from_rgb} != {from_grey}"
    assert from_pil == from_grey, f"PIL image vs grey array differ: {from_pil} != {from_grey}"
    assert assess(pil).statistics == from_grey, "assess reports the same statistics it scored"


def test_image_statistics_differ_for_different_pictures():
    # guards the test above: equal numbers must come from equal pictures, not constant output
    scene, dark = mid_grey_scene(), (mid_grey_scene() * 0.5).astype(np.uint8)
    assert image_statistics(scene) != image_statistics(dark), "different pictures should give different statistics"


def test_as_dict_returns_exactly_the_drift_features():
    statistics = image_statistics(mid_grey_scene())
    features = statistics.as_dict()
    assert tuple(features) == STAT_NAMES, f"keys are STAT_NAMES in order: {tuple(features)}"
    assert features == {name: getattr(statistics, name) for name in STAT_NAMES}, f"values by name: {features}"
    others = {field.name for field in dataclasses.fields(ImageStatistics)} - set(STAT_NAMES)
    assert others and not others & set(features), f"non-drift statistics ({others}) stay out: {features}"


@pytest.mark.parametrize("shape", [(1, 400), (400, 1), (2, 2), (1, 1)])
def test_a_sliver_of_an_image_has_finite_statistics(shape):
    sliver = np.full((*shape, 3), 40, np.uint8)
    stats = image_statistics(sliver)
    values = [getattr(stats, name) for name in ("brightness", "contrast", "sharpness", "noise", "saturated")]
    assert all(np.isfinite(v) for v in values), f"{shape}: {stats}"
    assert np.isfinite(assess(sliver).difficulty), f"{shape}: difficulty must be a number"
