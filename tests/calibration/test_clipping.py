"""Activation clipping on a hand-built model whose answer is known by counting."""

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from tasks.calibration.clipping import activation_clipping

pytestmark = pytest.mark.unit


def _models(low: float, high: float) -> tuple[ov.Model, ov.Model]:
    """FP: x → Multiply(×2) → Relu. INT8 twin: a FakeQuantize [low, high] between them, plus a weight quantizer."""

    def build(quantize: bool) -> ov.Model:
        x = ops.parameter([1, 4], np.float32, name="x")
        scaled = ops.multiply(x, ops.constant(np.float32(2.0)), name="scale")
        source = scaled
        if quantize:
            lo, hi = ops.constant(np.float32(low)), ops.constant(np.float32(high))
            source = ops.fake_quantize(scaled, lo, hi, lo, hi, 256, name="scale/fq_output_0")
        # A weight-style quantizer (on a Constant) must not be reported as an activation.
        bias = ops.constant(np.full([1, 4], 0.5, np.float32))
        if quantize:
            b_lo, b_hi = ops.constant(np.float32(-1.0)), ops.constant(np.float32(1.0))
            bias = ops.fake_quantize(bias, b_lo, b_hi, b_lo, b_hi, 255, name="bias/fq")
        out = ops.relu(ops.add(source, bias), name="relu")
        return ov.Model([out], [x], "tiny")

    return build(True), build(False)


def test_clipping_counts_fp_activations_outside_the_quantizer_range():
    # given range [-1, 2] on 2·x, and inputs whose doubled values are counted by hand:
    #   [-2, -0.25, 0.5, 3] → [-4, -0.5, 1, 6]: 2 of 4 outside;  [0.1, 0.2, 0.3, 0.4] → all inside
    int8, fp = _models(low=-1.0, high=2.0)
    inputs = [np.array([[-2.0, -0.25, 0.5, 3.0]], np.float32), np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)]
    report = activation_clipping(int8, fp, inputs)
    assert [layer.producer for layer in report.layers] == ["scale"], "only the activation quantizer is reported"
    layer = report.layers[0]
    assert layer.clipped_fraction == pytest.approx(2 / 8), f"clipped {layer.clipped_fraction}"
    assert (layer.input_low, layer.input_high) == (-1.0, 2.0), "range read from FakeQuantize inputs 1 and 2"
    assert layer.flagged and report.flagged == (layer,), "25 % is above the 1 % flag"
    assert report.metrics() == {"clipping.max_pct": 25.0, "clipping.flagged_layers": 1}, report.metrics()


def test_nothing_clipped_inside_a_wide_range():
    int8, fp = _models(low=-10.0, high=10.0)
    report = activation_clipping(int8, fp, [np.array([[-2.0, -0.25, 0.5, 3.0]], np.float32)])
    assert report.layers[0].clipped_fraction == 0.0 and not report.flagged, "no value leaves [-10, 10]"
