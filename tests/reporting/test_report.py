"""The run's markdown report: the per-condition table (rounded to 4 decimals), the headline
figures, the flagged-layer sentence, the Spearman clause only when a value is given, and the
gap's weight and activation parts with their intervals when the weights-only model was measured."""

import pytest

from tasks.calibration.decomposition import GapDecomposition, QuantizerPart
from tasks.evaluation.bootstrap import Interval
from tasks.evaluation.comparison import Comparison
from tasks.evaluation.evaluate import EvalResult
from tasks.reporting.report import condition_table, render_report

pytestmark = pytest.mark.unit


def _result(map_: float, map50: float, per_condition: dict[str, float], throughput_ips: float | None) -> EvalResult:
    return EvalResult(
        map=map_,
        map50=map50,
        per_class={},
        per_condition=per_condition,
        per_condition_map50={},
        images=20,
        throughput_ips=throughput_ips,
    )


def _comparison(fp16_ips: float | None = 100.0, int8_ips: float | None = 250.0) -> Comparison:
    fp16 = _result(0.41234, 0.61, {"normal": 0.512345, "low_light": 0.301239, "fog": float("nan")}, fp16_ips)
    int8 = _result(0.39, 0.60, {"normal": 0.50001, "low_light": 0.321236, "fog": 0.2}, int8_ips)
    return Comparison(fp16=fp16, int8=int8)


def _render(**overrides) -> str:
    arguments = {
        "title": "Release 42",
        "comparison": _comparison(),
        "strategy": "hard_tail_mix",
        "k": 256,
        "range_estimator": "MEAN_MINMAX",
        "spend_eur": 0.123456,
        "calls": 512,
        "cache_hit_rate": 0.25,
        "spearman": None,
        "flagged_layers": [],
        "mlflow_link": "http://mlflow.local/#/runs/abc",
    } | overrides
    return render_report(**arguments)


def test_condition_table_has_one_rounded_row_per_condition_with_numbers_on_both_sides():
    # given a comparison where "fog" has no FP16 ground truth
    rows = condition_table(_comparison())
    # then fog is left out, rows are sorted by condition, values rounded to 4 decimals
    assert [row["condition"] for row in rows] == ["low_light", "normal"], f"rows: {rows}"
    low_light, normal = rows
    assert low_light == {"condition": "low_light", "fp16_map": 0.3012, "int8_map": 0.3212, "gap": -0.02}, (
        f"low_light row rounded to 4 decimals, negative gap when INT8 is better: {low_light}"
    )
    assert normal == {"condition": "normal", "fp16_map": 0.5123, "int8_map": 0.5, "gap": 0.0123}, (
        f"normal row rounded to 4 decimals: {normal}"
    )


def test_report_contains_headline_figures_and_settings():
    report = _render()
    assert report.startswith("# Release 42\n"), f"title heading first: {report[:40]!r}"
    expected = [
        "INT8 mAP@[.5:.95] **0.3900** vs FP16 **0.4123**",
        "gap **+0.0223** (mAP@.5 gap +0.0100)",
        "Calibration: `hard_tail_mix`, K=256, range estimator `MEAN_MINMAX`, bias correction `fast`.",
        "512 paid calls, cache hit rate 25.0%, spend €0.1235",
        "Speed: INT8 250 img/s vs FP16 100 (2.50×).",
        "MLflow run: http://mlflow.local/#/runs/abc",
    ]
    for fragment in expected:
        assert fragment in report, f"report should contain {fragment!r}:\n{report}"


def test_report_has_the_per_condition_table_lines():
    lines = _render().splitlines()
    header = lines.index("| condition | FP16 | INT8 | gap |")
    assert lines[header + 1] == "|---|---:|---:|---:|", f"alignment row after header: {lines[header + 1]!r}"
    assert lines[header + 2 : header + 4] == [
        "| low_light | 0.3012 | 0.3212 | -0.0200 |",
        "| normal | 0.5123 | 0.5000 | +0.0123 |",
    ], f"one signed line per condition: {lines[header + 2 : header + 5]}"
    assert lines[header + 4] == "", (
        f"table ends after the two conditions (fog has no FP16 truth): {lines[header + 4]!r}"
    )


def test_report_names_flagged_layers_with_percentages():
    report = _render(flagged_layers=[("backbone.conv3", 0.0512), ("head.cls", 0.2)])
    assert "Layers clipping more than the threshold: `backbone.conv3` 5.12 %, `head.cls` 20.00 %" in report, (
        f"flagged layers sentence:\n{report}"
    )
    assert "No layer clips more than the threshold." not in report, f"no 'none' sentence with flags:\n{report}"


def test_report_says_no_layer_clips_without_flags():
    report = _render(flagged_layers=[])
    assert "No layer clips more than the threshold." in report, f"no-flag sentence:\n{report}"
    assert "Layers clipping more than the threshold" not in report, f"no flagged list without flags:\n{report}"


def test_spearman_clause_only_when_given():
    without = _render(spearman=None)
    with_value = _render(spearman=0.8766)
    assert "Spearman" not in without, f"no Spearman clause when None:\n{without}"
    assert "spend €0.1235." in without, f"scoring line ends with a full stop without Spearman:\n{without}"
    assert "spend €0.1235, Spearman between passes 0.877." in with_value, f"Spearman clause:\n{with_value}"


def test_speed_line_without_throughput_has_no_ratio():
    report = _render(comparison=_comparison(fp16_ips=None, int8_ips=None))
    assert "Speed: INT8 0 img/s vs FP16 0." in report, f"missing speeds read 0 and no ratio:\n{report}"
    assert "×" not in report, f"no ratio without throughput:\n{report}"


def _decomposed() -> tuple[Comparison, GapDecomposition]:
    """FP16 0.41234, weights-only 0.405, INT8 0.39; per condition as in `_comparison`."""
    weights_only = _result(0.405, 0.605, {"normal": 0.51, "low_light": 0.29, "fog": 0.21}, None)
    comparison = Comparison(fp16=_comparison().fp16, int8=_comparison().int8, weights_only=weights_only)
    decomposition = GapDecomposition(
        weights_only=weights_only,
        weight_part=Interval(0.00734, 0.0012, 0.0131, 0.95, 1000),
        activation_part=Interval(0.015, 0.0061, 0.0243, 0.95, 1000),
        quantizers=(QuantizerPart("x/fq_output_0", 0.0343, 0.397, 0.008),),
        activation_quantizers=44,
        rounded_weights=_result(0.4122, 0.61, {}, None),
        bias_correction_part=Interval(0.0072, 0.0031, 0.0101, 0.95, 1000),
    )
    return comparison, decomposition


def test_condition_table_adds_the_weights_only_model_and_both_parts():
    comparison, _ = _decomposed()
    low_light = condition_table(comparison)[0]
    assert low_light == {
        "condition": "low_light",
        "fp16_map": 0.3012,
        "int8_map": 0.3212,
        "gap": -0.02,
        "weights_only_map": 0.29,
        "weight_part": 0.0112,
        "activation_part": -0.0312,
    }, f"low_light row with the weights-only model: {low_light}"


def test_report_splits_the_gap_with_intervals_and_names_the_quantizer_measured_alone():
    comparison, decomposition = _decomposed()
    report = _render(comparison=comparison, decomposition=decomposition)
    expected = [
        "| condition | FP16 | weights-only | INT8 | gap | weight part | activation part |",
        "| low_light | 0.3012 | 0.2900 | 0.3212 | -0.0200 | +0.0112 | -0.0312 |",
        "## Where the gap comes from",
        "reaches mAP@[.5:.95] **0.4050**",
        "weight part **+0.0073 [+0.0012, +0.0131]**, activation part **+0.0150 [+0.0061, +0.0243]**",
        "95 % paired bootstrap interval over the 20 eval images, 1000 resamples",
        "the rounded weights alone reach **0.4122**",
        "NNCF's bias correction accounts for **+0.0072 [+0.0031, +0.0101]** of the weight part",
        "the 1 of 44 that clip most",
        "| `x/fq_output_0` | 3.43 % | 0.3970 | +0.0080 |",
    ]
    for fragment in expected:
        assert fragment in report, f"report should contain {fragment!r}:\n{report}"


def test_report_without_the_weights_only_model_has_no_parts_section():
    report = _render()
    assert "Where the gap comes from" not in report and "weights-only" not in report, f"nothing to split:\n{report}"
