"""Export → PTQ → evaluate on the shipped demo detector and a handful of real synthetic frames."""

import numpy as np
import openvino as ov
import pytest
import torch
from pydantic import ValidationError

from tasks.calibration.decomposition import bias_shifts
from tasks.calibration.quantize import QuantizationError, quantize, quantize_ir, quantize_ir_with_accuracy_control
from tasks.config import EvaluationConfig, QuantizationConfig
from tasks.detection.families import traceable
from tasks.detection.preprocess import preprocess
from tasks.detection.runtime import detect, load_detector, raw_outputs
from tasks.evaluation.evaluate import evaluate_ir, torch_detect
from tests.support import requires_demo_detector

pytestmark = [pytest.mark.integration, pytest.mark.slow, requires_demo_detector]


@pytest.fixture(scope="module")
def split(eval_split):
    """The first 12 frames of the session's labelled split."""
    return eval_split.head(12)


def test_fp16_ir_matches_pytorch(demo_detector, fp16_ir, split):
    # given the same frames, when PyTorch and the FP16 IR (run in f32) infer, then heads and detections agree
    images = split.images
    batch = preprocess(images[:4])
    with torch.no_grad():
        expected = [t.numpy() for t in traceable(demo_detector)(torch.from_numpy(batch))]
    got = raw_outputs(load_detector(fp16_ir).compiled, batch)
    # BatchNorm is folded into the convs before FP16 compression, so weights round once more: ~1e-2 abs.
    for name, want, have in zip(("ctr", "reg", "cls"), expected, got, strict=True):
        assert np.abs(want - have).max() < 5e-2, f"{name} head differs by {np.abs(want - have).max()}"
    detector = load_detector(fp16_ir)
    torch_dets = torch_detect(demo_detector, images, detector.adapter)
    ir_dets = detect(detector, images)
    for want, have in zip(torch_dets, ir_dets, strict=True):
        confident = want.scores > 0.3
        n = int(confident.sum())
        np.testing.assert_allclose(have.boxes[:n], want.boxes[:n], atol=0.5, err_msg="confident boxes moved")
        np.testing.assert_array_equal(have.labels[:n], want.labels[:n], err_msg="confident labels changed")


def test_int8_ir_is_calibrated_on_exactly_k_images(fp16_ir, split, tmp_path):
    result = quantize_ir(fp16_ir, split.images[:7], QuantizationConfig(), out_dir=tmp_path)
    assert result.subset_size == 7, f"NNCF must see exactly the 7 given images, saw {result.subset_size}"
    assert result.int8_ir_path == tmp_path / "detector_int8.xml" and result.int8_ir_path.exists(), "INT8 IR written"
    assert set(result.metrics()) == {"ptq.wall_s"} and result.metrics()["ptq.wall_s"] > 0, result.metrics()

    kinds = {op.get_type_name() for op in ov.Core().read_model(str(result.int8_ir_path)).get_ops()}
    assert "FakeQuantize" in kinds, "the INT8 IR holds quantizers"
    int8 = load_detector(result.int8_ir_path)
    assert len(detect(int8, split.images[:2])) == 2, "INT8 IR runs through the shared decoder"


def test_range_estimators_give_different_ranges(fp16_ir, eval_split, tmp_path):
    # given one image far brighter than the rest, MINMAX lets it set the input range; MEAN_MINMAX averages it away
    dim = [image for image in eval_split.images if image.max() < 250][:5]  # frames with no saturated pixel
    assert len(dim) == 5, "the split needs 5 frames without a saturated pixel"
    calib = [*dim, np.full_like(dim[0], 255)]
    ranges = {}
    for estimator in ("MINMAX", "MEAN_MINMAX"):
        config = QuantizationConfig(range_estimator=estimator)
        path = quantize_ir(fp16_ir, calib, config, out_dir=tmp_path / estimator).int8_ir_path
        fq = next(
            op for op in ov.Core().read_model(str(path)).get_ordered_ops() if op.get_type_name() == "FakeQuantize"
        )
        ranges[estimator] = float(fq.input_value(2).get_node().get_data().max())
    assert ranges["MINMAX"] > ranges["MEAN_MINMAX"], f"input ranges {ranges}"


def test_unknown_bias_correction_is_refused(fp16_ir, tmp_path):
    with pytest.raises(ValidationError, match="fast"):
        QuantizationConfig(bias_correction="slow")
    config = QuantizationConfig.model_construct(preset="performance", range_estimator="MINMAX", bias_correction="slow")
    with pytest.raises(QuantizationError, match="'fast' or 'none'"):
        quantize_ir(fp16_ir, [np.zeros((192, 192, 3), np.uint8)], config, out_dir=tmp_path)


def test_unknown_estimator_is_refused(fp16_ir, tmp_path):
    # the config refuses it at load; the stage refuses it too when handed an unvalidated config
    with pytest.raises(ValidationError, match="MEAN_MINMAX"):
        QuantizationConfig(range_estimator="MAXMIN")
    config = QuantizationConfig.model_construct(preset="performance", range_estimator="MAXMIN")
    with pytest.raises(QuantizationError, match="MEAN_MINMAX"):
        quantize_ir(fp16_ir, [np.zeros((192, 192, 3), np.uint8)], config, out_dir=tmp_path)


def test_evaluate_ir_reports_map_breakdown_and_speed(fp16_ir, split):
    result = evaluate_ir(fp16_ir, split, EvaluationConfig(latency_iterations=3))
    assert 0.0 <= result.map <= result.map50 <= 1.0, f"mAP {result.map}, mAP@.5 {result.map50}"
    assert result.images == 12 and result.per_condition, "per-condition breakdown present"
    assert result.latency_ms > 0 and result.throughput_ips > 0, "speed measured"


def test_bias_correction_none_keeps_the_fp_biases_and_fast_moves_them(fp16_ir, split, tmp_path):
    # given the same three calibration images, quantized with and without NNCF's fast bias correction
    shifts = {}
    for mode in ("fast", "none"):
        config = QuantizationConfig(bias_correction=mode)
        result = quantize_ir(fp16_ir, split.images[:3], config, out_dir=tmp_path / mode)
        assert result.bias_correction == mode, f"the result records how it was made: {result}"
        shifts[mode] = bias_shifts(result.int8_ir_path, fp16_ir)
    # then with none every bias of the INT8 IR is the FP IR's, bit for bit; with fast some moved
    assert len(shifts["none"]) > 10, f"the detector's bias Adds are matched by name: {len(shifts['none'])}"
    assert set(shifts["none"].values()) == {0.0}, f"none keeps the FP biases: {max(shifts['none'].values())}"
    moved = [name for name, shift in shifts["fast"].items() if shift > 0]
    # (17 of the demo detector's 36 on these images: NNCF skips a bias whose shift would be large next to it)
    assert len(moved) >= 5, f"fast bias correction moves biases, moved {len(moved)} of {len(shifts['fast'])}"


def test_accuracy_control_runs_with_map_as_the_metric(fp16_ir, split, tmp_path):
    # given a loose max_drop, NNCF validates FP and INT8 with our mAP function and returns an IR
    validation = split.head(4)
    config = QuantizationConfig(accuracy_control=True, max_drop=1.0, bias_correction="none")
    result = quantize_ir_with_accuracy_control(fp16_ir, validation.images, validation, config, out_dir=tmp_path)
    assert result.accuracy_control and result.subset_size == 4, f"{result}"
    assert result.int8_ir_path == tmp_path / "detector_int8_ac.xml", f"the mixed tier's name: {result.int8_ir_path}"
    assert result.int8_ir_path.exists(), "accuracy-controlled IR written"
    # and bias_correction reaches the accuracy-controlled path too: the FP biases are kept
    shifts = bias_shifts(result.int8_ir_path, fp16_ir)
    assert shifts and set(shifts.values()) == {0.0}, f"no bias moved: {max(shifts.values(), default=None)}"


def test_accuracy_control_needs_the_validation_split(fp16_ir, split, tmp_path):
    # given accuracy control on and no split to validate on, the stage says what is missing
    config = QuantizationConfig(accuracy_control=True)
    with pytest.raises(QuantizationError, match="evaluation split"):
        quantize(fp16_ir, split.images[:2], config, tmp_path)
