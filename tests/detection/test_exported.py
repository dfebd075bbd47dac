"""Exported YOLO-style detectors: each layout decodes hand-built outputs to hand-computed boxes, a
wrong declared layout is refused naming both, and a real export runs through every stage."""

import re

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
    ModelOutput,
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


def test_boxes_scores_labels_takes_each_output_from_the_order_decided_at_import():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 40], [5, 5, 8, 8]]], np.float32)
    labels = np.array([[1, 0, 1]], np.float32)
    scores = np.array([[0.25, 1.0, 0.0]], np.float32)  # 1.0 and 0.0: whole numbers, as labels are
    # given labels before scores (torchvision's order), as import recorded it
    decoder = BoxesScoresLabelsDecoder(3, outputs={"boxes": 0, "scores": 2, "labels": 1})
    (found,) = decoder.decode([boxes, labels, scores])
    np.testing.assert_allclose(found.boxes, [[20, 20, 30, 40], [0, 0, 10, 10]], err_msg="best first")
    np.testing.assert_allclose(found.scores, [1.0, 0.25], err_msg="scores are the recorded scores output")
    np.testing.assert_array_equal(found.labels, [0, 1], err_msg="labels are the recorded labels output")
    # and a batch of scores all exactly 0 or 1 does not swap them
    (found,) = decoder.decode([boxes, np.array([[2, 1, 0]], np.float32), np.array([[1.0, 1.0, 0.0]], np.float32)])
    np.testing.assert_array_equal(found.labels, [2, 1], err_msg="labels stay labels when scores are whole")
    np.testing.assert_allclose(found.scores, [1.0, 1.0], err_msg="scores stay scores when they are whole")


BOXES = ModelOutput("boxes", "f32", (1, 100, 4))


@pytest.mark.parametrize(
    ("first", "second", "labels_first"),
    [
        (ModelOutput("3021", "i64", (1, 100)), ModelOutput("3020", "f32", (1, 100)), True),  # torchvision's
        (ModelOutput("scores", "f32", (1, 100)), ModelOutput("labels", "i32", (1, 100)), False),
        (ModelOutput("det_classes", "f32", (1, 100)), ModelOutput("det_scores", "f32", (1, 100)), True),
        (ModelOutput("out_1", "f32", (1, 100)), ModelOutput("confidence", "f32", (1, 100)), True),
    ],
    ids=["integer-labels", "both-clues", "named-float-labels", "named-scores-only"],
)
def test_boxes_scores_labels_decides_which_output_is_which_once_from_types_and_names(first, second, labels_first):
    decoder = BoxesScoresLabelsDecoder(3).for_outputs([BOXES, first, second])
    assert decoder.outputs == {"boxes": 0, "labels": 1 if labels_first else 2, "scores": 2 if labels_first else 1}
    # and the decision is what the IR records and rebuilds
    assert BoxesScoresLabelsDecoder.from_spec(decoder.spec()).outputs == decoder.outputs, "recorded in the spec"


@pytest.mark.parametrize(
    ("first", "second", "names"),
    [
        (ModelOutput("out_1", "f32", (1, 100)), ModelOutput("out_2", "f32", (1, 100)), r"cannot tell which"),
        (ModelOutput("a", "i64", (1, 100)), ModelOutput("b", "i64", (1, 100)), r"cannot tell which"),
        (ModelOutput("scores", "i64", (1, 100)), ModelOutput("labels", "f32", (1, 100)), r"element types say 'scores'"),
    ],
    ids=["both-float-unnamed", "both-integer-unnamed", "types-and-names-disagree"],
)
def test_boxes_scores_labels_that_cannot_be_told_apart_are_refused(first, second, names):
    with pytest.raises(DetectorError) as refused:
        BoxesScoresLabelsDecoder(3).for_outputs([BOXES, first, second])
    message = str(refused.value)
    assert "detector.output_format 'boxes_scores_labels'" in message, f"names the setting: {message}"
    assert re.search(names, message), f"says why: {message}"
    assert f"{first.name!r}" in message and f"{second.name!r}" in message, f"names both outputs: {message}"
    assert "re-export the model with integer labels, or with output names" in message, f"says the fix: {message}"


def test_an_ir_without_the_recorded_output_order_asks_to_export_again():
    with pytest.raises(DetectorError, match=r"boxes_scores_labels decoder without which output.*export it again"):
        BoxesScoresLabelsDecoder.from_spec({"num_classes": 3})


# --- values that prove the declared layout wrong where shapes cannot ------------------------------


def _end2end(*rows):
    return [np.array([rows], np.float32)]


@pytest.mark.parametrize(
    "rows",
    [
        [[300, 300, 50, 40, 0.9, 0]],  # x, y, w, h read as corners
        [[10, 10, 50, 60, 0.8, 1], [100, 200, 40, 30, 0.5, 0]],  # one of two kept boxes, flipped in x and y
    ],
    ids=["one-box", "one-of-two"],
)
def test_end2end_boxes_that_are_not_corners_are_refused(rows):
    with pytest.raises(
        DetectorError,
        match=r"detector.output_format 'end2end': boxes are not x1 y1 x2 y2 \(x2 < x1 or y2 < y1 in 1 of \d kept boxes"
        r".*may give x, y, w, h.*set detector.output_format",
    ):
        End2EndDecoder(2).decode(_end2end(*rows))


def test_boxes_scores_labels_boxes_that_are_not_corners_are_refused():
    decoder = BoxesScoresLabelsDecoder(2, outputs={"boxes": 0, "scores": 1, "labels": 2})
    outputs = [np.array([[[50, 50, 20, 80]]], np.float32), np.array([[0.7]], np.float32), np.array([[1]], np.int64)]
    with pytest.raises(DetectorError, match=r"'boxes_scores_labels': boxes are not x1 y1 x2 y2.*x, y, w, h"):
        decoder.decode(outputs)


@pytest.mark.parametrize(
    ("decoder", "outputs", "cause"),
    [
        # x1 y1 x2 y2 class score: the class ids (2) land in the score column
        (End2EndDecoder(3), _end2end([10, 10, 50, 60, 2, 0.3], [20, 20, 40, 40, 0, 0.6]), r"score and class columns"),
        (
            BoxesScoresLabelsDecoder(3, outputs={"boxes": 0, "scores": 1, "labels": 2}),
            [np.array([[[10, 10, 50, 60]]], np.float32), np.array([[3.2]], np.float32), np.array([[1]], np.int64)],
            r"scores and labels outputs swapped",
        ),
    ],
    ids=["end2end", "boxes_scores_labels"],
)
def test_kept_scores_above_one_are_refused(decoder, outputs, cause):
    with pytest.raises(DetectorError, match=rf"detector.output_format '{decoder.kind}': .*scores outside 0–1.*{cause}"):
        decoder.decode(outputs)


def test_end2end_checks_pass_what_rounding_and_padding_give():
    # given a score a hair over 1, a zero-width box a hair inverted, a padding row and a NaN-score row
    out = _end2end(
        [10, 10, 50, 60, 1.0005, 0],
        [600, 100, 599.8, 140, 0.5, 1],  # x2 0.2 px under x1 at 600 px: float rounding, not a layout
        [0, 0, -1, -1, 0.0, -1],  # padding: never kept, never checked
        [300, 300, 50, 40, np.nan, 0],  # a NaN score is dropped, its box unchecked, as before
    )
    (found,) = End2EndDecoder(2).decode(out)
    np.testing.assert_array_equal(found.labels, [0, 1], err_msg="both real rows kept")


NORMALISED = r"boxes look normalised to 0–1 \(all 2 kept boxes .*640 px input\); {kind} gives them in input pixels"
NOT_FINITE = r"1 of 2 kept boxes have NaN or infinite coordinates.*re-export it in FP32"


@pytest.mark.parametrize(
    ("decoder", "output", "refusal"),
    [
        (
            Yolov8Decoder(2, input_size=640),
            [[[0.5, 0.1], [0.5, 0.2], [0.2, 0.05], [0.3, 0.1], [0.9, 0.0], [0.1, 0.4]]],
            NORMALISED,
        ),
        (
            Yolov5Decoder(2, input_size=640),
            [[[0.5, 0.5, 0.2, 0.3, 0.9, 0.8, 0.1], [1.2, 0.9, 0.1, 0.1, 0.5, 0.2, 0.9]]],
            NORMALISED,
        ),
        (
            Yolov8Decoder(2, input_size=640),
            [[[300, 100], [200, 120], [np.inf, 40], [80, 30], [0.9, 0.1], [0.1, 0.7]]],
            NOT_FINITE,
        ),
        (End2EndDecoder(2), [[[10, 10, 50, 60, 0.8, 0], [20, np.nan, 40, 40, 0.6, 1]]], NOT_FINITE),
    ],
    ids=["yolov8-normalised", "yolov5-normalised", "yolov8-infinite", "end2end-nan"],
)
def test_kept_boxes_no_layout_gives_are_refused(decoder, output, refusal):
    # boxes normalised to 0–1, or with a NaN or infinite coordinate: the shapes fit, the values cannot
    with pytest.raises(
        DetectorError, match=rf"detector.output_format '{decoder.kind}': " + refusal.format(kind=decoder.kind)
    ):
        decoder.decode([np.array(output, np.float32)])


def test_yolo_tiny_boxes_in_pixels_are_not_taken_for_normalised_ones():
    # given kept candidates of under 1.5 px, one of them at the origin, beside one elsewhere in the image
    out = np.zeros((1, 4 + 2, 3), np.float32)
    out[0, :, 0] = [1.0, 1.0, 1.2, 0.8, 0.9, 0.1]
    out[0, :, 1] = [300, 200, 1.0, 1.0, 0.1, 0.6]
    out[0, :, 2] = [0.5, 0.5, 0.2, 0.2, 0.0, 0.0005]  # under the threshold: not a kept candidate
    (found,) = Yolov8Decoder(2, input_size=640).decode([out])
    assert len(found.scores) == 2, "both kept candidates decoded"
    # and at an input under 32 px every box is small: no refusal
    normalised = out[:, :, :1]
    (found,) = Yolov8Decoder(2, input_size=16).decode([normalised])
    assert len(found.scores) == 1, "a 16 px input is not checked for normalised boxes"


def test_yolo_logit_scores_are_refused():
    out = np.zeros((1, 4 + 2, 2), np.float32)
    out[0, :, 0] = [50, 40, 20, 10, 3.5, -2.0]  # raw logits: no sigmoid in the model
    out[0, :, 1] = [10, 10, 4, 8, -1.0, 0.4]
    with pytest.raises(DetectorError, match=r"'yolov8': the model gives scores outside 0–1 \(up to 3.5\): .*logits"):
        Yolov8Decoder(2, input_size=64).decode([out])


def test_a_square_yolov8_output_is_read_as_ultralytics_and_its_transpose_refused():
    # given 6 candidates of 2 classes: [1, 4+nc, N] and [1, N, 4+nc] are both [1, 6, 6]
    rng = np.random.default_rng(0)
    candidates = np.concatenate(
        [rng.uniform(60, 500, (6, 2)), rng.uniform(10, 80, (6, 2)), rng.uniform(0, 1, (6, 2))], axis=1
    ).astype(np.float32)  # a row per candidate: cx, cy, w, h, 2 class scores
    decoder = Yolov8Decoder(2, input_size=640)
    decoder.check([[1, 6, 6]])  # the shape fits, whichever way round
    # when the output is Ultralytics' [1, 4+nc, N] it decodes
    (found,) = decoder.decode([candidates.T[None]])
    assert len(found.scores) > 0 and found.scores.max() <= 1, "Ultralytics' order decodes"
    # and when it is [1, N, 4+nc] it is refused, saying which way round tailcal needs it
    with pytest.raises(
        DetectorError,
        match=r"'yolov8': the model gives scores outside 0–1.*or the output is \[1, N, 6\] \(a row per candidate\), "
        r"which its square shape cannot tell from \[1, 6, N\]: export it as \[1, 4\+nc, N\]",
    ):
        decoder.decode([candidates[None]])


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


# --- inputs tailcal's images would not fit ------------------------------------------------------


class _Constant(torch.nn.Module):
    """A "detector" whose outputs are fixed, whatever the image: each output plus 0 × the image's
    mean (keeping the input in the graph), in the output's own dtype. `channels_last` reads the
    image as [N, H, W, 3]; the input's dtype is the example's (a cast to float inside the graph)."""

    def __init__(self, *outputs: np.ndarray, channels_last: bool = False) -> None:
        super().__init__()
        self.outputs = [torch.from_numpy(np.asarray(o)) for o in outputs]
        self.channels_last = channels_last

    def forward(self, image):
        image = image.permute(0, 3, 1, 2) if self.channels_last else image
        zero = image.float().mean() * 0
        found = tuple((o + zero).to(o.dtype) for o in self.outputs)
        return found if len(found) > 1 else found[0]


def _export_constant(model, path, example, dynamic=None, output_names=None):
    with torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=output_names,
            dynamic_axes={"images": dynamic} if dynamic else None,
        )
    return path


END2END_ROW = np.array([[[8, 8, 40, 40, 0.9, 1]]], np.float32)


@pytest.mark.parametrize(
    "dynamic",
    [{1: "h", 2: "w"}, {0: "n", 1: "h", 2: "w"}, {1: "h"}, None],
    ids=["dynamic-hw", "dynamic-nhw", "dynamic-h", "static"],
)
def test_a_channels_last_input_is_refused_static_or_dynamic(tmp_path, dynamic):
    # given an export that reads [N, H, W, 3], its H and W dynamic, partly or not at all
    source = _export_constant(
        _Constant(END2END_ROW, channels_last=True), tmp_path / "nhwc.onnx", torch.zeros(1, SIZE, SIZE, 3), dynamic
    )
    # then it is refused naming the file and the fix, not letterboxed to a 3 px side
    config = DetectorConfig(model=str(source), output_format="end2end", num_classes=NC)
    with pytest.raises(
        DetectorError,
        match=r"detector.model .*nhwc.onnx takes input 'images' .*3\], channels last \(NHWC\).*"
        r"re-export it channels first",
    ):
        ensure_fp16_ir(config, tmp_path / "models")


@pytest.mark.parametrize(("dtype", "name"), [(torch.uint8, "u8"), (torch.int32, "i32")])
def test_a_non_float_input_is_refused_naming_its_element_type(tmp_path, dtype, name):
    # given an export with the preprocessing baked in: an integer image input cast inside the graph
    image = torch.zeros(1, 3, SIZE, SIZE, dtype=dtype)
    source = _export_constant(_Constant(END2END_ROW), tmp_path / "baked.onnx", image)
    # then it is refused rather than fed 0–1 floats cast to integers (a black image)
    config = DetectorConfig(model=str(source), output_format="end2end", num_classes=NC)
    with pytest.raises(
        DetectorError,
        match=rf"detector.model .*baked.onnx takes input 'images' of element type {name}: tailcal feeds float 0–1 "
        r"RGB.*re-export the model without the preprocessing baked in",
    ):
        ensure_fp16_ir(config, tmp_path / "models")


def test_a_channels_first_constant_model_is_accepted(tmp_path):
    # the same model read channels first is fine: the refusals above are about the input alone
    source = _export_constant(_Constant(END2END_ROW), tmp_path / "nchw.onnx", torch.zeros(1, 3, SIZE, SIZE), {2: "h"})
    config = DetectorConfig(model=str(source), output_format="end2end", num_classes=NC, input_size=SIZE)
    (found,) = detect(load_detector(ensure_fp16_ir(config, tmp_path / "models")), [np.zeros((SIZE, SIZE, 3), np.uint8)])
    np.testing.assert_allclose(found.boxes, [[8, 8, 40, 40]], err_msg="the constant box, in the image's pixels")


def test_boxes_labels_scores_in_torchvisions_order_decode_right_when_every_score_is_whole(tmp_path):
    # given torchvision's ONNX order (boxes, labels, scores) with int64 labels and unhelpful names,
    # and every score exactly 1 or 0, which the old per-batch guess took for labels
    boxes = np.array([[[4, 8, 20, 30], [30, 30, 50, 60], [0, 0, 1, 1]]], np.float32)
    labels = np.array([[2, 1, 0]], np.int64)
    scores = np.array([[1.0, 1.0, 0.0]], np.float32)
    model = _Constant(boxes, labels, scores)
    source = _export_constant(
        model, tmp_path / "tv.onnx", torch.zeros(1, 3, SIZE, SIZE), output_names=["o1", "o2", "o3"]
    )
    config = DetectorConfig(model=str(source), output_format="boxes_scores_labels", num_classes=3)
    fp16_ir = ensure_fp16_ir(config, tmp_path / "models")
    # then the integer output is the labels, in every batch
    assert adapter_of(fp16_ir).decoder.outputs == {"boxes": 0, "labels": 1, "scores": 2}, "decided at import"
    (found,) = detect(load_detector(fp16_ir), [np.zeros((SIZE, SIZE, 3), np.uint8)])
    np.testing.assert_array_equal(found.labels, [2, 1], err_msg="the int64 output's labels")
    np.testing.assert_allclose(found.scores, [1.0, 1.0], err_msg="the float output's scores")
    np.testing.assert_allclose(found.boxes, [[4, 8, 20, 30], [30, 30, 50, 60]], err_msg="the kept boxes")


def test_boxes_scores_labels_with_float_unnamed_outputs_is_refused_at_import(tmp_path):
    boxes = np.array([[[4, 8, 20, 30]]], np.float32)
    flat = np.array([[1.0]], np.float32)
    model = _Constant(boxes, flat, flat)
    source = _export_constant(
        model, tmp_path / "anon.onnx", torch.zeros(1, 3, SIZE, SIZE), output_names=["a", "b", "c"]
    )
    config = DetectorConfig(model=str(source), output_format="boxes_scores_labels", num_classes=3)
    with pytest.raises(
        DetectorError, match=r"cannot tell which of the outputs 'b' \(f32 \[1, 1\]\) and 'c'.*re-export"
    ):
        ensure_fp16_ir(config, tmp_path / "models")


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
    assert adapter_of(fp16_ir).decoder.input_size == SIZE, "the decoder records the input side for its checks"


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
