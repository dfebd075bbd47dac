"""Export → PTQ → evaluate on the shipped demo detector and a handful of real synthetic frames."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.config import DetectorConfig, SyntheticConfig
from tasks.detection.postprocess import preprocess
from tasks.detection.runtime import compile_ir, detect, raw_outputs
from tasks.detector import RawHeadModel, build_detector, export_ir
from tasks.evaluate import evaluate_ir, load_eval_split, map_validation_fn, torch_detect
from tasks.quantize import QuantizationError, quantize_ir, quantize_ir_with_accuracy_control
from tasks.synth.write import write_labelled_split

CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "demo_detector.pt"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHECKPOINT.exists(), reason="models/demo_detector.pt not built (flows/train_detector.py)"),
]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    write_labelled_split(SyntheticConfig(seed=3), "eval", out, 12)
    return out


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_detector(DetectorConfig(checkpoint=str(CHECKPOINT)))


@pytest.fixture(scope="module")
def fp_ir(model, tmp_path_factory):
    return export_ir(model, tmp_path_factory.mktemp("ir"), input_size=192).xml_path


def test_fp16_ir_matches_pytorch(model, fp_ir, split):
    # given the same frames, when PyTorch and the FP16 IR (run in f32) infer, then heads and detections agree
    _, images = load_eval_split(split)
    batch = preprocess(images[:4])
    with torch.no_grad():
        expected = [t.numpy() for t in RawHeadModel(model)(torch.from_numpy(batch))]
    got = raw_outputs(compile_ir(fp_ir), batch)
    # BatchNorm is folded into the convs before FP16 compression, so weights round once more: ~1e-2 abs.
    for name, want, have in zip(("cls", "reg", "ctr"), expected, got, strict=True):
        assert np.abs(want - have).max() < 5e-2, f"{name} head differs by {np.abs(want - have).max()}"
    torch_dets, ir_dets = torch_detect(model, images), detect(compile_ir(fp_ir), images)
    for want, have in zip(torch_dets, ir_dets, strict=True):
        confident = want.scores > 0.3
        n = int(confident.sum())
        np.testing.assert_allclose(have.boxes[:n], want.boxes[:n], atol=0.5, err_msg="confident boxes moved")
        np.testing.assert_array_equal(have.labels[:n], want.labels[:n], err_msg="confident labels changed")


def test_int8_ir_is_calibrated_on_exactly_k_images(fp_ir, split, tmp_path):
    _, images = load_eval_split(split)
    result = quantize_ir(fp_ir, images[:7], out_dir=tmp_path)
    assert result.subset_size == 7, f"NNCF must see exactly the 7 given images, saw {result.subset_size}"
    assert result.int8_ir_path.exists(), "INT8 IR written"
    import openvino as ov

    kinds = {op.get_type_name() for op in ov.Core().read_model(str(result.int8_ir_path)).get_ops()}
    assert "FakeQuantize" in kinds, "the INT8 IR holds quantizers"
    assert len(detect(compile_ir(result.int8_ir_path), images[:2])) == 2, "INT8 IR runs through the shared decoder"


def test_range_estimators_give_different_ranges(fp_ir, split, tmp_path):
    # given one image far brighter than the rest, MINMAX lets it set the input range; MEAN_MINMAX averages it away
    _, images = load_eval_split(split)
    calib = [*images[:5], np.full_like(images[0], 255)]
    ranges = {}
    import openvino as ov

    for estimator in ("MINMAX", "MEAN_MINMAX"):
        path = quantize_ir(fp_ir, calib, range_estimator=estimator, out_dir=tmp_path, name=estimator).int8_ir_path
        fq = next(
            op for op in ov.Core().read_model(str(path)).get_ordered_ops() if op.get_type_name() == "FakeQuantize"
        )
        ranges[estimator] = float(fq.input_value(2).get_node().get_data().max())
    assert ranges["MINMAX"] > ranges["MEAN_MINMAX"], f"input ranges {ranges}"


def test_unknown_estimator_is_refused(fp_ir):
    with pytest.raises(QuantizationError, match="MEAN_MINMAX"):
        quantize_ir(fp_ir, [np.zeros((192, 192, 3), np.uint8)], range_estimator="MAXMIN")


def test_evaluate_ir_reports_map_breakdown_and_speed(fp_ir, split):
    result = evaluate_ir(fp_ir, split, latency_iterations=3)
    assert 0.0 <= result.map <= result.map50 <= 1.0, f"mAP {result.map}, mAP@.5 {result.map50}"
    assert result.images == 12 and result.per_condition, "per-condition breakdown present"
    assert result.latency_ms > 0 and result.throughput_ips > 0, "speed measured"


def test_accuracy_control_runs_with_map_as_the_metric(fp_ir, split, tmp_path):
    # given a loose max_drop, NNCF validates FP and INT8 with our mAP function and returns an IR
    coco, images = load_eval_split(split, limit=4)
    items = [(img["id"], image) for img, image in zip(coco["images"], images, strict=True)]
    result = quantize_ir_with_accuracy_control(
        fp_ir, images, items, map_validation_fn(coco), max_drop=1.0, out_dir=tmp_path
    )
    assert result.accuracy_control and result.subset_size == 4, f"{result}"
    assert result.int8_ir_path.exists(), "accuracy-controlled IR written"
