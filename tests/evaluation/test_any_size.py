"""Any image size into the detector: one preprocessing contract (letterbox or stretch to the input
size) in evaluation, calibration and serving, with boxes mapped back to each image's pixels."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.calibration.quantize import quantize_ir
from tasks.config import EvaluationConfig, QuantizationConfig
from tasks.detection.preprocess import Placement, Preprocessing
from tasks.detection.runtime import preprocessing_of
from tasks.evaluation.evaluate import evaluate_ir
from tasks.evaluation.split import EvalSplit, load_eval_split
from tasks.serving.engines import OpenVinoEngine
from tests.support import requires_demo_detector

pytestmark = [pytest.mark.integration, requires_demo_detector]


def _write_split(out: Path, coco: dict, images: list[np.ndarray]) -> EvalSplit:
    (out / "images").mkdir(parents=True, exist_ok=True)
    for record, image in zip(coco["images"], images, strict=True):
        Image.fromarray(image).save(out / "images" / record["file_name"], quality=95)
    (out / "annotations.json").write_text(json.dumps(coco))
    return load_eval_split(out)


def _resized_split(split: EvalSplit, sizes: list[tuple[int, int]], out: Path) -> EvalSplit:
    """The split's frames stretched to the given (width, height) sizes in turn, boxes moved with them."""
    coco = json.loads(json.dumps(split.coco))
    images = []
    scale_of = {}
    for i, (record, image) in enumerate(zip(coco["images"], split.images, strict=True)):
        width, height = sizes[i % len(sizes)]
        images.append(np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)))
        scale_of[record["id"]] = (width / record["width"], height / record["height"])
        record.update(width=width, height=height, file_name=f"{record['id']}.jpg")
    for annotation in coco["annotations"]:
        sx, sy = scale_of[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        annotation["bbox"] = [x * sx, y * sy, w * sx, h * sy]
        annotation["area"] = w * sx * h * sy
    return _write_split(out, coco, images)


def _fitted_beforehand(split: EvalSplit, prep: Preprocessing, out: Path) -> EvalSplit:
    """The same split with each frame already fit to the detector's input, boxes in input pixels."""
    coco = json.loads(json.dumps(split.coco))
    images, placement_of = [], {}
    for record, image in zip(coco["images"], split.images, strict=True):
        fitted, placement = prep.fit(image)
        images.append(fitted)
        placement_of[record["id"]] = placement
        record.update(width=prep.input_size, height=prep.input_size, file_name=f"fit-{record['id']}.png")
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        x0, y0, x1, y1 = placement_of[annotation["image_id"]].to_input(np.array([[x, y, x + w, y + h]]))[0]
        annotation["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        annotation["area"] = float((x1 - x0) * (y1 - y0))
    out.mkdir(parents=True, exist_ok=True)
    for record, image in zip(coco["images"], images, strict=True):
        (out / "images").mkdir(exist_ok=True)
        Image.fromarray(image).save(out / "images" / record["file_name"])  # PNG: the exact fitted pixels
    (out / "annotations.json").write_text(json.dumps(coco))
    return load_eval_split(out)


def test_a_640x480_eval_set_scores_the_map_of_the_same_set_fit_beforehand(fp16_ir, eval_split, tmp_path):
    # given the eval frames at camera size, and the same frames letterboxed to 192 px beforehand
    camera = _resized_split(eval_split, [(640, 480)], tmp_path / "camera")
    beforehand = _fitted_beforehand(camera, preprocessing_of(fp16_ir), tmp_path / "fitted")
    # when both are evaluated
    config = EvaluationConfig(latency_iterations=1)
    at_camera_size = evaluate_ir(fp16_ir, camera, config, measure_speed=False)
    fitted = evaluate_ir(fp16_ir, beforehand, config, measure_speed=False)
    # then the detector saw the same pixels, and the boxes came back to each frame's own pixels
    print(f"mAP at 640×480 {at_camera_size.map:.4f}, fit beforehand {fitted.map:.4f}")
    assert at_camera_size.map > 0.2, f"a real mAP, not a broken mapping: {at_camera_size.map}"
    assert abs(at_camera_size.map - fitted.map) <= 0.002, f"{at_camera_size.map:.4f} vs {fitted.map:.4f}"


@pytest.mark.parametrize(
    "sizes",
    [
        [(640, 480), (800, 600)],  # two camera sizes in one split
        [(480, 640), (1280, 720), (100, 80)],  # portrait, wide, smaller than the input
    ],
)
def test_mixed_sizes_evaluate_in_one_split(fp16_ir, eval_split, tmp_path, sizes):
    mixed = _resized_split(eval_split.head(12), sizes, tmp_path / "mixed")
    result = evaluate_ir(fp16_ir, mixed, EvaluationConfig(latency_iterations=1), measure_speed=False)
    assert result.images == 12 and 0.0 < result.map <= 1.0, f"sizes {sizes}: {result.map}"


def test_calibration_images_at_camera_size_quantize(fp16_ir, eval_split, tmp_path):
    frames = [np.asarray(Image.fromarray(image).resize((640, 480))) for image in eval_split.images[:6]]
    frames.append(np.asarray(Image.fromarray(eval_split.images[6]).resize((600, 800))))
    result = quantize_ir(fp16_ir, frames, QuantizationConfig(), tmp_path)
    assert result.subset_size == 7 and result.int8_ir_path.exists(), f"PTQ on 7 camera-size frames: {result}"
    assert preprocessing_of(result.int8_ir_path) == preprocessing_of(fp16_ir), "the INT8 IR keeps the contract"


def test_the_service_answers_in_the_images_own_pixels(fp16_ir, eval_split):
    engine = OpenVinoEngine(fp16_ir, requests=1)
    frame = np.asarray(Image.fromarray(eval_split.images[0]).resize((640, 480)))
    found = engine.infer(frame)
    assert len(found.boxes) > 0, "the detector finds something in a real frame"
    assert found.boxes[:, 0::2].max() <= 640 and found.boxes[:, 1::2].max() <= 480, "boxes lie in the 640×480 frame"
    assert found.boxes[:, 0::2].max() > 192, "boxes were mapped back from the 192-px input"


def test_letterbox_and_stretch_place_pixels_and_boxes_consistently():
    image = np.zeros((480, 640, 3), np.uint8)
    letterbox, stretch = Preprocessing(192, "letterbox"), Preprocessing(192, "stretch")
    fitted, padded = letterbox.fit(image)
    assert fitted.shape == (192, 192, 3) and padded == Placement(0.3, 0.3, 0.0, 24.0, 640, 480), padded
    assert (fitted[:24] == 128).all() and (fitted[-24:] == 128).all(), "letterbox pads top and bottom with the mean"
    _, stretched = stretch.fit(image)
    assert stretched == Placement(0.3, 0.4, 0.0, 0.0, 640, 480), stretched
    box = np.array([[64.0, 48.0, 320.0, 240.0]])
    for placement in (padded, stretched):
        assert np.allclose(placement.to_original(placement.to_input(box)), box), "to_input and back is the identity"
    outside = np.array([[-5.0, -5.0, 500.0, 500.0]])
    assert np.allclose(stretched.to_original(outside), [[0, 0, 640, 480]]), "boxes are clipped to the image"
