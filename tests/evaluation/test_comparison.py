"""Comparison of an FP16 and an INT8 evaluation: the gaps (positive = INT8 worse), per condition
and per class without the keys that have no ground truth, the throughput ratio, the split of the
gap into weight and activation parts given the weights-only model, and the flat MLflow metric names."""

import math

import pytest

from tasks.evaluation.comparison import BaselineComparison, Comparison
from tasks.evaluation.evaluate import EvalResult

pytestmark = pytest.mark.unit

NAN = float("nan")


def _result(
    map_: float,
    map50: float,
    per_condition: dict[str, float] | None = None,
    per_class: dict[str, float] | None = None,
    throughput_ips: float | None = None,
    latency_ms: float | None = None,
) -> EvalResult:
    return EvalResult(
        map=map_,
        map50=map50,
        per_class=per_class or {},
        per_condition=per_condition or {},
        per_condition_map50={},
        images=10,
        latency_ms=latency_ms,
        throughput_ips=throughput_ips,
    )


def test_gap_is_fp16_minus_int8_so_a_worse_int8_gives_a_positive_gap():
    # given INT8 losing 0.05 mAP and 0.02 mAP@.5
    comparison = Comparison(fp16=_result(0.40, 0.60), int8=_result(0.35, 0.58))
    # then the gaps are positive and exact
    assert comparison.gap == pytest.approx(0.05), f"gap should be fp16 − int8 = 0.05, got {comparison.gap}"
    assert comparison.gap50 == pytest.approx(0.02), f"gap50 should be 0.60 − 0.58 = 0.02, got {comparison.gap50}"


def test_gap_is_negative_when_int8_is_better():
    comparison = Comparison(fp16=_result(0.30, 0.50), int8=_result(0.32, 0.49))
    assert comparison.gap == pytest.approx(-0.02), f"INT8 better by 0.02 should give gap −0.02, got {comparison.gap}"
    assert comparison.gap50 == pytest.approx(0.01), f"gap50 is independent of gap: {comparison.gap50}"


def test_per_condition_gap_drops_nan_and_one_sided_keys_and_sorts():
    # given conditions where one side has no ground truth (NaN) or the condition is missing on INT8
    fp16 = _result(0.4, 0.6, per_condition={"snow": 0.30, "low_light": 0.20, "fog": NAN, "glare": 0.5, "rain": 0.1})
    int8 = _result(0.3, 0.5, per_condition={"snow": 0.25, "low_light": 0.22, "fog": 0.1, "rain": NAN})
    # when
    gaps = Comparison(fp16=fp16, int8=int8).per_condition_gap
    # then only conditions with numbers on both sides remain, in sorted order
    assert list(gaps) == ["low_light", "snow"], f"NaN / one-sided conditions must be dropped, sorted: {list(gaps)}"
    assert gaps["snow"] == pytest.approx(0.05), f"snow gap 0.30 − 0.25: {gaps['snow']}"
    assert gaps["low_light"] == pytest.approx(-0.02), f"low_light gap 0.20 − 0.22: {gaps['low_light']}"


def test_per_class_gap_drops_nan_keys():
    fp16 = _result(0.4, 0.6, per_class={"person": 0.5, "car": 0.4, "bike": NAN})
    int8 = _result(0.3, 0.5, per_class={"person": 0.45, "car": NAN, "bike": 0.2})
    gaps = Comparison(fp16=fp16, int8=int8).per_class_gap
    assert gaps == pytest.approx({"person": 0.05}), f"only classes with both sides finite: {gaps}"


@pytest.mark.parametrize(
    ("fp16_ips", "int8_ips"),
    [(None, 200.0), (100.0, None), (None, None), (0.0, 200.0)],
    ids=["fp16-missing", "int8-missing", "both-missing", "fp16-zero"],
)
def test_throughput_ratio_is_none_when_a_side_lacks_throughput(fp16_ips, int8_ips):
    comparison = Comparison(
        fp16=_result(0.4, 0.6, throughput_ips=fp16_ips), int8=_result(0.3, 0.5, throughput_ips=int8_ips)
    )
    assert comparison.throughput_ratio is None, f"ratio with {fp16_ips=} {int8_ips=}: {comparison.throughput_ratio}"


def test_throughput_ratio_is_int8_over_fp16():
    comparison = Comparison(fp16=_result(0.4, 0.6, throughput_ips=100.0), int8=_result(0.3, 0.5, throughput_ips=250.0))
    assert comparison.throughput_ratio == pytest.approx(2.5), f"INT8 2.5× faster: {comparison.throughput_ratio}"


def test_metrics_names_and_values():
    # given a comparison with one finite condition, one NaN condition, one class and speeds
    fp16 = _result(
        0.40,
        0.60,
        per_condition={"low_light": 0.30, "fog": NAN},
        per_class={"person": 0.50},
        throughput_ips=100.0,
        latency_ms=8.0,
    )
    int8 = _result(
        0.35,
        0.57,
        per_condition={"low_light": 0.20, "fog": 0.1},
        per_class={"person": 0.44},
        throughput_ips=300.0,
        latency_ms=3.0,
    )
    # when
    metrics = Comparison(fp16=fp16, int8=int8).metrics()
    # then every name is there with its value
    expected = {
        "fp16.map": 0.40,
        "fp16.map50": 0.60,
        "int8.map": 0.35,
        "int8.map50": 0.57,
        "gap.map": 0.05,
        "gap.map50": 0.03,
        "fp16.latency_ms": 8.0,
        "int8.latency_ms": 3.0,
        "int8_vs_fp16.throughput_ratio": 3.0,
        "gap.map.low_light": 0.10,
        "fp16.map.low_light": 0.30,
        "int8.map.low_light": 0.20,
        "gap.map.class.person": 0.06,
    }
    assert set(metrics) == set(expected), f"metric names differ: {sorted(set(metrics) ^ set(expected))}"
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value), f"{name}: expected {value}, got {metrics[name]}"
    assert not any("fog" in name for name in metrics), f"the NaN condition must not be logged: {sorted(metrics)}"


def test_metrics_keep_missing_speed_as_none():
    # given no speed measured, then the speed metrics are None (skipped by the logger), not zero
    metrics = Comparison(fp16=_result(0.4, 0.6), int8=_result(0.3, 0.5)).metrics()
    for name in ("fp16.latency_ms", "int8.latency_ms", "int8_vs_fp16.throughput_ratio"):
        assert metrics[name] is None, f"{name} should be None without a measurement, got {metrics[name]}"
    assert all(v is None or math.isfinite(v) for v in metrics.values()), f"only finite or None: {metrics}"


def test_weights_only_splits_the_gap_into_weight_and_activation_parts_overall_and_per_condition():
    # given FP16 0.40, weights-only 0.39, INT8 0.35; low_light 0.30 / 0.29 / 0.20; fog without FP16 truth
    fp16 = _result(0.40, 0.60, per_condition={"low_light": 0.30, "fog": NAN})
    weights_only = _result(0.39, 0.59, per_condition={"low_light": 0.29, "fog": 0.2})
    int8 = _result(0.35, 0.57, per_condition={"low_light": 0.20, "fog": 0.1})
    comparison = Comparison(fp16=fp16, int8=int8, weights_only=weights_only)
    # then the parts are exact and add up to the gap
    assert comparison.weight_gap == pytest.approx(0.01), f"FP16 − weights-only: {comparison.weight_gap}"
    assert comparison.activation_gap == pytest.approx(0.04), f"weights-only − INT8: {comparison.activation_gap}"
    assert comparison.weight_gap + comparison.activation_gap == pytest.approx(comparison.gap), "parts add to the gap"
    assert comparison.per_condition_weight_gap == pytest.approx({"low_light": 0.01}), "fog has no FP16 truth"
    assert comparison.per_condition_activation_gap == pytest.approx({"low_light": 0.09, "fog": 0.1}), (
        f"weights-only and INT8 both measure fog: {comparison.per_condition_activation_gap}"
    )
    metrics = comparison.metrics()
    expected = {
        "weights_only.map": 0.39,
        "gap_part.weights": 0.01,
        "gap_part.activations": 0.04,
        "gap_part.weights.low_light": 0.01,
        "gap_part.activations.low_light": 0.09,
        "gap_part.activations.fog": 0.1,
    }
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value), f"{name}: expected {value}, got {metrics.get(name)}"
    assert not any(name.startswith("gap.map.gap_part") for name in metrics), "parts never read as conditions"


def test_without_the_weights_only_model_there_are_no_parts():
    comparison = Comparison(fp16=_result(0.4, 0.6), int8=_result(0.3, 0.5))
    assert comparison.weight_gap is None and comparison.activation_gap is None, "not measured is None, not 0"
    assert comparison.per_condition_weight_gap == {} and comparison.per_condition_activation_gap == {}, "no parts"
    assert not any(name.startswith(("gap_part", "weights_only")) for name in comparison.metrics()), "no metrics"


def test_a_baseline_is_logged_under_its_own_prefix_and_printed_beside_the_chosen_gap():
    # given FP16 0.40, the chosen set's INT8 0.38 and first_n's 0.37, without per-image matches
    fp16 = _result(0.40, 0.60, per_condition={"fog": 0.30, "night": NAN})
    first_n = _result(0.37, 0.58, per_condition={"fog": 0.25, "night": NAN})
    baseline = BaselineComparison.of("first_n", 16, fp16, _result(0.38, 0.59), first_n, resamples=100, seed=0)
    # then its gap, the difference of gaps, and no interval without matches
    assert baseline.difference is None, "no matches, no interval"
    metrics = baseline.metrics()
    assert metrics == pytest.approx(
        {
            "baseline.first_n.k": 16.0,
            "baseline.first_n.int8.map": 0.37,
            "baseline.first_n.gap.map": 0.03,
            "baseline.first_n.gap.map50": 0.02,
            "baseline.first_n.gap_difference": -0.01,
            "baseline.first_n.gap.map.fog": 0.05,
        }
    ), f"prefixed metrics, a condition without ground truth left out: {metrics}"
    line = baseline.describe("hard_tail_mix")
    assert line.startswith("gap +0.0200 (hard_tail_mix) vs +0.0300 (first_n, same K=16, INT8 0.3700)"), line
    assert "difference -0.0100 (no interval" in line, f"the difference is still printed: {line}"
