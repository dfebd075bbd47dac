"""The run's PNG plots: each function writes a readable PNG at the path it is given (creating
parent folders) and returns that path; the clipping chart copes with many layers and the
histogram with unscored (None) difficulties."""

from pathlib import Path

import pytest
from PIL import Image

from tasks.reporting.plots import clipping_bars, condition_map_bars, difficulty_histogram

pytestmark = pytest.mark.unit


def _assert_png(returned: Path, expected: Path) -> tuple[int, int]:
    assert returned == expected, f"the function should return the path it wrote: {returned} != {expected}"
    assert expected.is_file(), f"no file at {expected}"
    assert expected.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{expected} does not start with the PNG signature"
    with Image.open(expected) as image:
        image.verify()
    with Image.open(expected) as image:
        assert image.format == "PNG", f"{expected} decodes as {image.format}, not PNG"
        width, height = image.size
    assert width > 0 and height > 0, f"{expected} has an empty size {width}×{height}"
    return width, height


def test_difficulty_histogram_writes_a_png_and_creates_parent_dirs(tmp_path):
    # given a path in folders that do not exist yet
    path = tmp_path / "plots" / "nested" / "difficulty.png"
    # when
    returned = difficulty_histogram([0.1, 0.2, 0.5, 0.9, 0.95], [0.8, 0.9, 0.95], path)
    # then
    _assert_png(returned, path)


def test_difficulty_histogram_ignores_none_values(tmp_path):
    # given pool and selection with unscored images (None)
    path = tmp_path / "difficulty.png"
    # when / then: no TypeError from None in the histogram, and a PNG is written
    returned = difficulty_histogram([0.1, None, 0.4, None, 0.7], [None, 0.7, 0.8], path)
    _assert_png(returned, path)


def test_condition_map_bars_writes_a_png_even_when_int8_lacks_a_condition(tmp_path):
    path = tmp_path / "out" / "conditions.png"
    returned = condition_map_bars(
        {"normal": 0.5, "low_light": 0.3, "fog": 0.2}, {"normal": 0.48, "low_light": 0.25}, path
    )
    _assert_png(returned, path)


def test_clipping_bars_writes_a_png(tmp_path):
    path = tmp_path / "out" / "clipping.png"
    returned = clipping_bars(["backbone.conv1", "head.cls"], [0.002, 0.08], 0.01, path)
    _assert_png(returned, path)


def test_clipping_bars_with_more_than_40_layers_plots_the_worst_40(tmp_path):
    # given 120 layers with long names (the chart keeps the 40 worst and the names' last 40 characters)
    names = [f"model.backbone.stage{i // 10}.block{i % 10}.conv.weight_quantizer.output/{i:03d}" for i in range(120)]
    fractions = [(i % 17) / 400 for i in range(120)]
    few_path, many_path = tmp_path / "few.png", tmp_path / "many" / "clipping.png"
    # when
    _, few_height = _assert_png(clipping_bars(names[:5], fractions[:5], 0.02, few_path), few_path)
    _, many_height = _assert_png(clipping_bars(names, fractions, 0.02, many_path), many_path)
    # then the figure grows with the plotted layers, capped at 40 (0.18 in per bar at 110 dpi)
    assert many_height > few_height, f"40 bars should need a taller figure than 5: {many_height} vs {few_height}"
    assert many_height <= round(0.18 * 40 * 110) + 1, f"at most 40 layers are drawn: height {many_height} px"
