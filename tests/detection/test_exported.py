"""Exported YOLO-style detectors: each layout decodes hand-built outputs to hand-computed boxes, a
wrong declared layout is refused naming both, and a real export runs through every stage."""

import numpy as np
import openvino as ov
import pytest
import torch

from tasks.calibration.quantize import quantize_ir
from tasks.config import DetectorConfig, EvaluationConfig, QuantizationConfig
from tasks.detection.adapter import DetectorError
from tasks.detection.export import ensure_fp16_ir
from tasks.detection.exported import (
    BoxesScoresLabelsDecoder,
    End2EndDecoder,
    Yolov5Decoder,
    Yolov8Decoder,
    decode_subgraph,
)
from tasks.detection.runtime import adapter_of, detect, load_detector
from tasks.evaluation.evaluate import evaluate_ir
from tasks.serving.engines import OpenVinoEngine
from tests.detection.yolo_like import End2EndLike, Yolov5Like, Yolov8Like, export_onnx, export_xml

pytestmark = pytest.mark.integration

SIZE = 64
NC = 4  # the synthetic eval split's classes


# --- each layout on a hand-built output -------------------------------------------------------


def test_yolov8_columns_decode_to_corner_boxes_with_classwise_nms():
    # given three candidate columns: two overlapping boxes of class 0 and one of class 1
    out = np.zeros((1, 4 + 2, 3), np.float32)
    out[0, :, 0] = [50, 40, 20, 10, 0.9, 0.1]  # cx cy w h → [40, 35, 60, 45], class 0 at 0.9
    out[0, :, 1] = [51, 40, 20, 10, 0.6, 0.2]  # IoU > 0.7 with the first, class 0 at 0.6 → suppressed
    out[0, :, 2] = [10, 10, 4, 8, 0.1, 0.5]  # → [8, 6, 12, 14], class 1 at 0.5
    # when decoded
    (found,) = Yolov8Decoder(2).decode([out])
    # then the overlapping weaker box is gone and corners are cx ± w/2, cy ± h/2
    np.testing.assert_allclose(found.boxes, [[40, 35, 60, 45], [8, 6, 12, 14]], err_msg="corner boxes")
    np.testing.assert_allclose(found.scores, [0.9, 0.5], rtol=1e-6, err_msg="best class score per box")
    np.testing.assert_array_equal(found.labels, [0, 1], err_msg="labels are the best class")


def test_yolov5_rows_multiply_objectness_and_class_score():
    # given two rows: objectness 0.5 × class-1 score 0.8, and one under the 0.001 threshold
    out = np.zeros((1, 2, 5 + 3), np.float32)
    out[0, 0] = [100, 100, 40, 20, 0.5, 0.1, 0.8, 0.2]
    out[0, 1] = [30, 30, 10, 10, 0.01, 0.05, 0.0, 0.0]  # 0.01 × 0.05 = 0.0005 < 0.001
    (found,) = Yolov5Decoder(3).decode([out])
    np.testing.assert_allclose(found.boxes, [[80, 90, 120, 110]], err_msg="cx ± w/2, cy ± h/2")
    np.testing.assert_allclose(found.scores, [0.4], rtol=1e-6, err_msg="objectness × class score")
    np.testing.assert_array_equal(found.labels, [1], err_msg="the best class")


def test_end2end_rows_are_taken_as_they_are_best_first():
    out = np.array([[[1, 2, 11, 12, 0.3, 2], [5, 5, 9, 9, 0.8, 0], [0, 0, 1, 1, 0.0, 1]]], np.float32)
    (found,) = End2EndDecoder(3).decode([out])
    np.testing.assert_allclose(found.boxes, [[5, 5, 9, 9], [1, 2, 11, 12]], err_msg="no NMS, score order")
    np.testing.assert_array_equal(found.labels, [0, 2], err_msg="class column as labels")
    assert len(found.scores) == 2, "a zero-score row is dropped"


def test_end2end_refuses_a_class_beyond_num_classes():
    out = np.array([[[1, 2, 11, 12, 0.3, 7]]], np.float32)
    with pytest.raises(DetectorError, match=r"class 7 .*num_classes is 3"):
        End2EndDecoder(3).decode([out])


def test_boxes_scores_labels_tells_scores_from_labels_by_value_not_order():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 40]]], np.float32)
    labels = np.array([[1, 0]], np.float32)
    scores = np.array([[0.25, 0.75]], np.float32)
    # labels come before scores here; the decoder must not take them for scores
    (found,) = BoxesScoresLabelsDecoder(2).decode([boxes, labels, scores])
    np.testing.assert_allclose(found.boxes, [[20, 20, 30, 40], [0, 0, 10, 10]], err_msg="best first")
    np.testing.assert_allclose(found.scores, [0.75, 0.25], err_msg="scores are the fractional output")
    np.testing.assert_array_equal(found.labels, [0, 1], err_msg="labels are the whole-number output")


# --- declared layout vs the model's outputs ------------------------------------------------------


@pytest.fixture(scope="module")
def yolov8_onnx(tmp_path_factory):
    torch.manual_seed(0)
    return export_onnx(Yolov8Like(NC, SIZE), SIZE, tmp_path_factory.mktemp("v8") / "yolov8.onnx")


@pytest.mark.parametrize(
    ("declared", "names"),
    [
        ("yolov5", r"'yolov5' .*expects one output \[1, N, 9\].*\[1, 8, 80\].*fits 'yolov8'"),
        ("end2end", r"'end2end' .*expects one output \[1, N, 6\].*\[1, 8, 80\].*fits 'yolov8'"),
        ("boxes_scores_labels", r"'boxes_scores_labels' .*three outputs.*\[1, 8, 80\]"),
    ],
)
def test_a_wrong_declared_layout_names_the_declared_and_the_real_shapes(yolov8_onnx, tmp_path, declared, names):
    config = DetectorConfig(model=str(yolov8_onnx), output_format=declared, num_classes=NC)
    with pytest.raises(DetectorError, match=names):
        ensure_fp16_ir(config, tmp_path)
    assert not list(tmp_path.rglob("*.xml")), "nothing is exported for a refused model"


def test_a_wrong_class_count_names_the_count_the_model_implies(yolov8_onnx, tmp_path):
    config = DetectorConfig(model=str(yolov8_onnx), output_format="yolov8", num_classes=80)
    with pytest.raises(
        DetectorError,
        match=r"\[1, 84, N\].*\[1, 8, 80\]; as yolov8 \(\[1, 4\+nc, N\]\) it would have num_classes 4: check",
    ):
        ensure_fp16_ir(config, tmp_path)


def test_a_model_file_that_is_not_a_model_is_refused(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(DetectorError, match=r"model.onnx cannot be read by OpenVINO"):
        ensure_fp16_ir(DetectorConfig(model=str(bogus), output_format="yolov8"), tmp_path / "ir")


def test_an_input_size_contradicting_the_export_is_refused(yolov8_onnx, tmp_path):
    config = DetectorConfig(model=str(yolov8_onnx), output_format="yolov8", num_classes=NC, input_size=640)
    with pytest.raises(DetectorError, match=r"input_size 640 contradicts .*fixed 64 px"):
        ensure_fp16_ir(config, tmp_path)


def test_a_dynamic_export_whose_graph_fixes_the_size_asks_for_input_size(tmp_path):
    # given an IR whose input is dynamic but whose decode grid was built for 64 px
    source = export_xml(End2EndLike(NC, SIZE), SIZE, tmp_path / "dynamic.xml", static=False)
    # then the default 640 px is refused with the setting to use
    config = DetectorConfig(model=str(source), output_format="end2end", num_classes=NC)
    with pytest.raises(DetectorError, match=r"cannot run at 640×640 px .*set detector.input_size"):
        ensure_fp16_ir(config, tmp_path / "models")
    # and with detector.input_size it exports at that size
    fixed = ensure_fp16_ir(config.model_copy(update={"input_size": SIZE}), tmp_path / "models")
    assert adapter_of(fixed).preprocessing.input_size == SIZE, "the configured size is the IR's input"


# --- a real export through every stage ---------------------------------------------------------


def _rounded(model: torch.nn.Module) -> torch.nn.Module:
    """The model with fp16-rounded weights, as the FP16 IR stores them."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    return model.eval()


LAYOUTS = [
    ("yolov8", Yolov8Like, export_onnx),
    ("yolov5", Yolov5Like, export_onnx),
    ("end2end", End2EndLike, export_xml),
]


@pytest.fixture(scope="module", params=LAYOUTS, ids=[name for name, _, _ in LAYOUTS])
def exported(request, tmp_path_factory):
    """(layout, torch model, FP16 IR) for a tiny model exported as YOLO exporters do."""
    layout, cls, export = request.param
    torch.manual_seed(1)
    model = _rounded(cls(NC, SIZE))
    out = tmp_path_factory.mktemp(layout)
    source = export(model, SIZE, out / f"model{'.xml' if export is export_xml else '.onnx'}")
    config = DetectorConfig(model=str(source), output_format=layout, num_classes=NC)
    return layout, model, ensure_fp16_ir(config, out / "models")


def test_fp16_ir_detections_match_the_torch_model(exported, eval_split):
    layout, model, fp16_ir = exported
    adapter = adapter_of(fp16_ir)
    images = eval_split.images[:4]

    def run(batch):
        with torch.no_grad():
            return [model(torch.from_numpy(batch)).numpy()]

    want = adapter.detect_with(run, images)
    have = detect(load_detector(fp16_ir), images)
    assert sum(len(w.scores) for w in want) > 0, "the comparison needs detections to compare"
    for w, h in zip(want, have, strict=True):
        n = min(len(w.scores), 20)
        np.testing.assert_allclose(h.scores[:n], w.scores[:n], atol=1e-3, err_msg=f"{layout}: scores moved")
        np.testing.assert_allclose(h.boxes[:n], w.boxes[:n], atol=1.0, err_msg=f"{layout}: boxes moved > 1 px")
        np.testing.assert_array_equal(h.labels[:n], w.labels[:n], err_msg=f"{layout}: labels changed")


def test_exported_ir_records_the_yolo_preprocessing(exported):
    _, _, fp16_ir = exported
    preprocessing = adapter_of(fp16_ir).preprocessing
    assert preprocessing.input_size == SIZE, "the input size is the export's own"
    assert preprocessing.pad_color == (114, 114, 114), "letterbox on YOLO grey"
    assert preprocessing.mean == (0.0, 0.0, 0.0) and preprocessing.std == (1.0, 1.0, 1.0), "0–1 scaling"


def test_int8_ir_is_built_from_exactly_k_images_with_the_decoder_in_float(exported, eval_split, tmp_path):
    layout, _, fp16_ir = exported
    result = quantize_ir(fp16_ir, eval_split.images[:5], QuantizationConfig(), tmp_path)
    assert result.subset_size == 5, f"NNCF must see exactly 5 images, saw {result.subset_size}"
    assert result.preset == "mixed", "exported layouts quantize with the mixed preset unless told otherwise"
    decoding = set(decode_subgraph(ov.Core().read_model(str(fp16_ir))))
    assert decoding, f"{layout}: the box-decoding subgraph was found"
    quantized = ov.Core().read_model(str(result.int8_ir_path))
    quantizers = [op for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert quantizers, "the convolutions are quantized"
    fed = {target.get_node().get_friendly_name() for fq in quantizers for target in fq.output(0).get_target_inputs()}
    assert not fed & decoding, f"{layout}: decode ops {sorted(fed & decoding)[:3]} were fed by quantizers"


def test_evaluation_and_serving_run_on_the_exported_model(exported, eval_split):
    layout, _, fp16_ir = exported
    result = evaluate_ir(fp16_ir, eval_split.head(6), EvaluationConfig(), measure_speed=False)
    assert 0.0 <= result.map <= 1.0 and result.images == 6, f"{layout}: a mAP over the 6 images"
    camera = np.full((90, 160, 3), 60, np.uint8)  # not square, not the input size
    found = OpenVinoEngine(fp16_ir).infer(camera)
    assert found.boxes.shape[1:] == (4,), "the service answers with boxes"
    assert (found.boxes[:, 0::2] <= 160).all() and (found.boxes[:, 1::2] <= 90).all(), "in the frame's own pixels"


def test_a_yolov5_export_with_the_wrong_class_count_gets_the_count_its_rows_imply():
    # given a [1, N, 5+nc] output with nc = 4 declared as 80 classes
    with pytest.raises(DetectorError, match=r"\[1, 25200, 9\]; as yolov5 .* num_classes 4: check"):
        Yolov5Decoder(80).check([[1, 25200, 9]])
    # and a shape with no clear candidate axis gets no guess at all
    with pytest.raises(DetectorError) as refused:
        Yolov5Decoder(80).check([[1, 8, 8]])
    assert "as yolo" not in str(refused.value), f"no guess for an ambiguous shape: {refused.value}"
