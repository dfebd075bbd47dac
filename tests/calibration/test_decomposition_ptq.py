"""The gap decomposition on models NNCF really quantized: what NNCF 3.4 writes for weights (int8
constants, kept by the weights-only model), and on the demo detector a calibration set that
clips a known range — washed-out frames, every input within ±0.4 after normalisation, so the
input quantizer cuts eval frames that reach ±2 — where the activation part dominates."""

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from tasks.calibration.clipping import activation_clipping
from tasks.calibration.decomposition import decompose_gap, restore_float_biases, weights_only_model
from tasks.calibration.quantize import quantize_ir
from tasks.config import EvaluationConfig, QuantizationConfig
from tasks.detection.runtime import preprocessing_of
from tasks.evaluation.evaluate import evaluate_ir
from tests.support import requires_demo_detector

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _tiny_conv_model() -> ov.Model:
    """Three 3×3 convolutions with biases of about 1 (NNCF's fast bias correction leaves biases
    alone when its shift would be large next to them), ReLU between."""
    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, 16, 16], np.float32, name="x")
    hidden = x
    for i, (channels_in, channels_out) in enumerate([(3, 8), (8, 8), (8, 4)]):
        weights = rng.normal(0, 0.5, (channels_out, channels_in, 3, 3)).astype(np.float32)
        hidden = ops.convolution(hidden, ops.constant(weights), [1, 1], [1, 1], [1, 1], [1, 1], name=f"conv{i}")
        bias = rng.normal(1.0, 0.5, (1, channels_out, 1, 1)).astype(np.float32)
        hidden = ops.add(hidden, ops.constant(bias), name=f"conv{i}/bias")
        hidden = ops.relu(hidden) if i < 2 else hidden
    return ov.Model([hidden], [x], "tiny-conv")


def _int8_constants(model: ov.Model) -> int:
    return sum(
        op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.i8 for op in model.get_ops()
    )


def _run(model: ov.Model, inputs: list[np.ndarray]) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.stack([compiled(x)[compiled.outputs[0]] for x in inputs])


def test_nncf_writes_int8_weight_constants_that_the_weights_only_model_keeps():
    import nncf

    rng = np.random.default_rng(1)
    narrow = [rng.uniform(-0.25, 0.25, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    wide = [rng.uniform(-2.0, 2.0, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    fp = _tiny_conv_model()
    int8 = nncf.quantize(fp.clone(), nncf.Dataset(narrow), subset_size=len(narrow))
    # then NNCF 3.4 folds weight quantizers into int8 constants: no FakeQuantize sits on a constant
    assert _int8_constants(int8) == 3, f"one int8 weight constant per convolution, found {_int8_constants(int8)}"
    weights_only = weights_only_model(int8)
    kinds = [op.get_type_name() for op in weights_only.get_ops()]
    assert "FakeQuantize" not in kinds, "every activation quantizer is gone"
    assert _int8_constants(weights_only) == 3, "the int8 weights stay as NNCF rounded them"
    # and on inputs beyond the calibration range, only the full INT8 model suffers the clipping
    reference = _run(fp, wide)
    weights_error = np.abs(_run(weights_only, wide) - reference).mean()
    full_error = np.abs(_run(int8, wide) - reference).mean()
    assert 0 < weights_error < 0.25 * full_error, f"weights-only error {weights_error} vs INT8 {full_error}"


def test_restored_biases_give_the_model_nncf_makes_without_bias_correction():
    # given one calibration set quantized with NNCF's default (fast bias correction) and with it disabled
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    rng = np.random.default_rng(2)
    data = [rng.uniform(-0.5, 1.0, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    fp = _tiny_conv_model()
    corrected = nncf.quantize(fp.clone(), nncf.Dataset(data), subset_size=len(data))
    plain = nncf.quantize(
        fp.clone(),
        nncf.Dataset(data),
        subset_size=len(data),
        advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True),
    )
    # when the corrected model's biases are put back from the FP model
    rounded = weights_only_model(corrected)
    assert restore_float_biases(rounded, fp) == 3, "the three bias Adds are matched by the names NNCF keeps"
    # then it is the weights-only model NNCF makes without bias correction
    probe = [rng.uniform(-2.0, 2.0, (1, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    got, expected = _run(rounded, probe), _run(weights_only_model(plain), probe)
    np.testing.assert_allclose(got, expected, atol=1e-5, err_msg="rounded weights with FP biases")
    assert np.abs(_run(weights_only_model(corrected), probe) - expected).max() > 1e-3, "the correction moved biases"


@requires_demo_detector
def test_washed_out_calibration_puts_the_gap_in_the_activation_part(fp16_ir, eval_split, tmp_path):
    split = eval_split.head(12)
    washed_out = [(127.5 + (image.astype(np.float32) - 127.5) * 0.2).astype(np.uint8) for image in split.images[:4]]
    int8_ir = quantize_ir(fp16_ir, washed_out, QuantizationConfig(range_estimator="MINMAX"), tmp_path).int8_ir_path
    config = EvaluationConfig(attributed_quantizers=2, bootstrap_resamples=200)
    fp16 = evaluate_ir(fp16_ir, split, config, measure_speed=False)
    int8 = evaluate_ir(int8_ir, split, config, measure_speed=False)
    clipping = activation_clipping(int8_ir, fp16_ir, preprocessing_of(fp16_ir).inputs(split.images))
    # when
    parts = decompose_gap(int8_ir, fp16_ir, split, config, fp16, int8, clipping, tmp_path / "work")
    # then the weights-only gap is within the full gap, and the two parts add up to it
    gap, weight, activation = fp16.map - int8.map, fp16.map - parts.weights_only.map, parts.weights_only.map - int8.map
    assert weight <= gap, f"weights-only gap {weight} must not exceed the full gap {gap}"
    assert abs(parts.weight_part.estimate + parts.activation_part.estimate - gap) < 1e-9, "parts add to the gap"
    assert abs(parts.activation_part.estimate - activation) < 1e-9, "the interval's estimate is the part itself"
    rounding = fp16.map - parts.rounded_weights.map
    assert abs(rounding + parts.bias_correction_part.estimate - weight) < 1e-9, "rounding + bias correction = weights"
    assert activation > 0.2 and parts.activation_part.low > 0, f"clipping the input costs mAP: {parts.activation_part}"
    # and the input quantizer, which clips most, carries the activation part alone
    top = parts.quantizers[0]
    assert top.name == "x/fq_output_0" and top.clipped_fraction > 0.5, f"the input quantizer clips most: {top}"
    assert top.part > 0.5 * activation, f"the input quantizer alone {top.part} vs the activation part {activation}"
    assert len(parts.quantizers) == 2 and parts.activation_quantizers > 10, f"two of many measured: {parts}"
    assert list((tmp_path / "work").iterdir()) == [], "the temporary IRs are removed"


@requires_demo_detector
def test_without_bias_correction_the_bias_correction_part_is_exactly_zero(fp16_ir, eval_split, tmp_path):
    # given the demo detector quantized with quantization.bias_correction none
    split = eval_split.head(8)
    config = QuantizationConfig(range_estimator="MINMAX", bias_correction="none")
    int8_ir = quantize_ir(fp16_ir, split.images[:4], config, tmp_path).int8_ir_path
    evaluation = EvaluationConfig(attributed_quantizers=0, bootstrap_resamples=100)
    fp16 = evaluate_ir(fp16_ir, split, evaluation, measure_speed=False)
    int8 = evaluate_ir(int8_ir, split, evaluation, measure_speed=False)
    clipping = activation_clipping(int8_ir, fp16_ir, preprocessing_of(fp16_ir).inputs(split.images[:2]))
    # when the gap is decomposed
    parts = decompose_gap(int8_ir, fp16_ir, split, evaluation, fp16, int8, clipping, tmp_path / "work")
    # then the rounded-weights model is the weights-only model: no bias to put back, nothing fitted
    assert parts.rounded_weights is parts.weights_only, "no bias moved, so no second model is evaluated"
    bias = parts.bias_correction_part
    assert (bias.estimate, bias.low, bias.high) == (0.0, 0.0, 0.0), f"bias-correction part {bias}"
    assert parts.metrics()["gap_part.bias_correction"] == 0.0, "MLflow gets the exact 0"
    assert abs(parts.weight_part.estimate + parts.activation_part.estimate - (fp16.map - int8.map)) < 1e-9, "parts add"
