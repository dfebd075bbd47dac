"""The weights-only model on a hand-built INT8 twin whose outputs are known by hand: activation
quantizers go, weight quantizers stay, a kept quantizer acts alone, the FP model's biases can be
put back; and the one summary line."""

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from tasks.calibration.decomposition import (
    DecompositionError,
    GapDecomposition,
    QuantizerPart,
    activation_quantizer_names,
    restore_float_biases,
    weights_only_model,
)
from tasks.evaluation.bootstrap import Interval
from tasks.evaluation.evaluate import EvalResult

pytestmark = pytest.mark.unit

WEIGHTS = np.array([[0.31, -0.72], [0.55, 0.12], [-0.18, 0.93]], np.float32)  # [3, 2]
BIAS = np.array([0.05, -0.1], np.float32)


def _fake_quantize(x: np.ndarray, low: float, high: float, levels: int = 256) -> np.ndarray:
    """OpenVINO's FakeQuantize with equal input and output ranges (its specification, by hand)."""
    step = (high - low) / (levels - 1)
    return np.round((np.clip(x, low, high) - low) / step) * step + low


def _int8_model() -> ov.Model:
    """x → FQ[-1, 1] → MatMul(FQ[-1, 1](W)) → Relu → FQ[0, 0.5] → + bias: two activation
    quantizers, one weight quantizer on a constant (the form NNCF writes without weight compression)."""
    x = ops.parameter([1, 3], np.float32, name="x")
    lo, hi = ops.constant(np.float32(-1.0)), ops.constant(np.float32(1.0))
    x_q = ops.fake_quantize(x, lo, hi, lo, hi, 256, name="x/fq")
    w_q = ops.fake_quantize(ops.constant(WEIGHTS), lo, hi, lo, hi, 255, name="w/fq")
    hidden = ops.relu(ops.matmul(x_q, w_q, False, False), name="relu")
    r_lo, r_hi = ops.constant(np.float32(0.0)), ops.constant(np.float32(0.5))
    hidden_q = ops.fake_quantize(hidden, r_lo, r_hi, r_lo, r_hi, 256, name="relu/fq")
    out = ops.add(hidden_q, ops.constant(BIAS), name="out")
    return ov.Model([out], [x], "tiny-int8")


def _run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x)[compiled.outputs[0]]


# Inputs beyond the input quantizer's [-1, 1] and hidden values beyond [0, 0.5]: both clip.
X = np.array([[1.7, -0.4, 0.9]], np.float32)
W_Q = _fake_quantize(WEIGHTS, -1.0, 1.0, levels=255)


def test_activation_quantizers_are_named_in_order_and_the_weight_quantizer_is_not_one():
    assert activation_quantizer_names(_int8_model()) == ["x/fq", "relu/fq"], "the two activation quantizers"


def test_weights_only_keeps_quantized_weights_and_float_activations():
    original = _int8_model()
    model = weights_only_model(original)
    kinds = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert kinds == ["w/fq"], f"only the weight quantizer stays: {kinds}"
    expected = np.maximum(X @ W_Q, 0) + BIAS
    np.testing.assert_allclose(_run(model, X), expected, atol=1e-5, err_msg="quantized weights, float activations")
    full = _fake_quantize(np.maximum(_fake_quantize(X, -1, 1) @ W_Q, 0), 0.0, 0.5) + BIAS
    np.testing.assert_allclose(_run(original, X), full, atol=1e-5, err_msg="the INT8 model itself is left as it was")
    assert np.abs(expected - full).max() > 0.1, "the constructed case clips: the two models must differ"


def test_a_kept_quantizer_acts_alone():
    model = weights_only_model(_int8_model(), keep={"x/fq"})
    expected = np.maximum(_fake_quantize(X, -1.0, 1.0) @ W_Q, 0) + BIAS
    np.testing.assert_allclose(_run(model, X), expected, atol=1e-5, err_msg="only the input quantizer clips")


def test_an_unknown_quantizer_name_is_refused_with_the_names_to_use():
    with pytest.raises(DecompositionError, match="activation_quantizer_names") as err:
        weights_only_model(_int8_model(), keep={"w/fq"})
    assert "w/fq" in str(err.value), f"the message names the bad entry: {err.value}"


def test_the_summary_line_gives_both_parts_with_intervals_and_the_costliest_quantizer_alone():
    weights_only = EvalResult(0.560, 0.8, {}, {}, {}, images=500)
    decomposition = GapDecomposition(
        weights_only=weights_only,
        weight_part=Interval(0.0041, 0.0012, 0.0070, 0.95, 1000),
        activation_part=Interval(0.0038, 0.0009, 0.0066, 0.95, 1000),
        quantizers=(QuantizerPart("stem/fq", 0.001, 0.5595, 0.0005), QuantizerPart("x/fq", 0.0343, 0.557, 0.003)),
        activation_quantizers=44,
    )
    line = decomposition.describe(fp16_map=0.5641, int8_map=0.5562)
    assert line == (
        "weights +0.0041 [+0.0012, +0.0070], activations +0.0038 [+0.0009, +0.0066] (95 % CI); "
        "alone: x/fq +0.0030, clips 3.43 %"
    ), f"one line, the costliest quantizer named: {line!r}"
    metrics = decomposition.metrics()
    assert metrics["gap_part.activations.ci_low"] == 0.0009 and metrics["gap_part.weights.ci_high"] == 0.0070, metrics
    assert metrics["quantizer.x/fq.clipped_pct"] == pytest.approx(3.43), f"clipping in %: {metrics}"
    assert metrics["decomposition.activation_quantizers"] == 44, metrics


def _linear(bias: np.ndarray, quantize: bool) -> ov.Model:
    """x → [FQ] → MatMul(W) → + bias (named like NNCF keeps it) → out."""
    x = ops.parameter([1, 3], np.float32, name="x")
    source = x
    if quantize:
        lo, hi = ops.constant(np.float32(-1.0)), ops.constant(np.float32(1.0))
        source = ops.fake_quantize(x, lo, hi, lo, hi, 256, name="x/fq")
    product = ops.matmul(source, ops.constant(W_Q), False, False, name="matmul")
    out = ops.add(product, ops.convert(ops.constant(bias.astype(np.float16)), "f32"), name="matmul/bias")
    return ov.Model([out], [x], "linear")


def test_restoring_float_biases_undoes_a_bias_correction_by_name():
    # given an INT8 model whose bias a correction moved, and its FP model with the original bias
    corrected, original = np.array([0.25, -0.5], np.float32), np.array([0.05, -0.1], np.float32)
    int8, fp = _linear(corrected, quantize=True), _linear(original, quantize=False)
    model = weights_only_model(int8)
    # when
    restored = restore_float_biases(model, fp)
    # then the bias is the FP one, and nothing else changed
    assert restored == 1, f"one bias Add matched by name: {restored}"
    expected = X @ W_Q + original
    np.testing.assert_allclose(_run(model, X), expected, atol=1e-3, err_msg="rounded weights with the FP bias")


def test_a_bias_of_another_shape_is_refused():
    fp = _linear(np.zeros(2, np.float32), quantize=False)
    x = ops.parameter([1, 3], np.float32, name="x")
    product = ops.matmul(x, ops.constant(np.ones((3, 4), np.float32)), False, False, name="matmul")
    other = ov.Model([ops.add(product, ops.constant(np.zeros(4, np.float32)), name="matmul/bias")], [x], "other")
    with pytest.raises(DecompositionError, match="FP IR the INT8 IR was quantized from"):
        restore_float_biases(other, fp)


def test_the_summary_line_names_the_bias_correction_share_when_measured():
    decomposition = GapDecomposition(
        weights_only=EvalResult(0.5569, 0.8, {}, {}, {}, images=500),
        weight_part=Interval(0.0072, 0.0033, 0.0101, 0.95, 1000),
        activation_part=Interval(0.0009, -0.0037, 0.0053, 0.95, 1000),
        quantizers=(),
        activation_quantizers=44,
        rounded_weights=EvalResult(0.5641, 0.8, {}, {}, {}, images=500),
        bias_correction_part=Interval(0.0072, 0.0040, 0.0104, 0.95, 1000),
    )
    line = decomposition.describe(fp16_map=0.5641, int8_map=0.5560)
    assert line == (
        "weights +0.0072 [+0.0033, +0.0101] (bias correction +0.0072 of it), "
        "activations +0.0009 [-0.0037, +0.0053] (95 % CI)"
    ), f"the bias correction's share of the weight part: {line!r}"
    metrics = decomposition.metrics()
    assert metrics["gap_part.bias_correction"] == pytest.approx(0.0072), metrics
    assert metrics["rounded_weights.map"] == 0.5641 and metrics["gap_part.bias_correction.ci_low"] == 0.0040, metrics
