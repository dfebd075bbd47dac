"""Every torchvision family through the pipeline, at a small input and with random weights: the
FP16 IR detects what PyTorch's own `model.eval()(images)` detects, the INT8 IR is calibrated on
exactly K images, evaluation scores it, the serving engine answers on another image size, and a
checkpoint loads plain or under 'model' while one that does not fit names its keys.

Random weights as torchvision initialises them detect nothing worth comparing (RetinaNet sits at
its 0.01 prior under its 0.05 threshold; SSDlite's and the MobileNet trunks' activations vanish to
~1e-8, so every score ties). `_with_detections` gives each model signal first: a data-dependent
rescaling of every layer's weights (LSUV, Mishkin & Matas 2016, "All you need is a good init")
and a shift of the class biases so about `CANDIDATES_PER_IMAGE` scores per image pass the
family's own threshold, far from every top-k cap.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.ssd import SSD

from tasks.calibration.quantize import QuantizeResult, quantize_ir
from tasks.config import DetectorConfig, EvaluationConfig, QuantizationConfig
from tasks.detection.adapter import DetectorError
from tasks.detection.export import ensure_fp16_ir
from tasks.detection.families import FAMILIES, Family, build_detector, build_model, preprocessing_for
from tasks.detection.postprocess import Detections
from tasks.detection.preprocess import Preprocessing
from tasks.detection.runtime import detect, load_detector
from tasks.evaluation.evaluate import evaluate_ir
from tasks.serving.engines import OpenVinoEngine

pytestmark = pytest.mark.integration

NUM_CLASSES = 4  # the synthetic split's defect classes
SMALL_SIZE = 128  # FPN families; SSD300/SSDlite320 keep the size their anchors are built for
K = 4
CANDIDATES_PER_IMAGE = 10
FCOS_CENTERNESS_BIAS = 10.0
BOX_TOLERANCE_PX = 1.0
SCORE_TOLERANCE = 1e-3
CAMERA_SIZE = (640, 480)  # the serving test's frame: another size and aspect than the input
# Measured on 2 shared cores, all six tests of one family (export included): fcos_compact
# 8–12 s, the others 22–76 s (SSD300 and the ResNet-50 families the most), depending on the
# load. Every family but the demo's own is `slow`.
QUICK = {"fcos_compact"}


def _size(family: Family) -> int:
    return family.standard_size if family.fixed_size else SMALL_SIZE


def _class_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that emit class logits (one per level for SSD's per-level heads)."""
    if isinstance(model, FasterRCNN):
        return [model.roi_heads.box_predictor.cls_score]
    head = model.head.classification_head
    if hasattr(head, "cls_logits"):
        return [head.cls_logits]
    return [layer[-1] if isinstance(layer, nn.Sequential) else layer for layer in head.module_list]


def _with_detections(model: nn.Module, images: list[torch.Tensor]) -> None:
    """Rescale `model` in place so it detects something on `images` (float 0–1 [3, S, S]).

    BatchNorm becomes an exact identity (running_var = 1 − eps): OpenVINO folds BatchNorm into
    the convolutions before FP16 compression, and a fold that is not ×1 would round the weights a
    second time, which in a random network amplifies to logit errors of ~0.2. Each conv/linear
    layer is then scaled, in the order the forward pass first reaches it, so its output has unit
    std (LSUV). Last, the class biases move so that every image has detections (`_bias_shift`)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)
                module.weight.fill_(1.0)
                module.bias.zero_()
    seen: set[int] = set()

    def normalise(module, _inputs, output):
        if id(module) in seen:  # shared heads run once per level: scale on the first
            return output
        seen.add(id(module))
        std = output.detach().std()
        with torch.no_grad():
            module.weight /= std
            if module.bias is not None:
                module.bias /= std
        return output / std

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with _hooked(layers, normalise), torch.no_grad():
        model(images)
    # Per image, the bias shift that lets CANDIDATES_PER_IMAGE of its scores pass; the most
    # permissive one is kept, so every image has detections.
    shifts, captured = [], []
    for image in images:
        captured.clear()
        with _hooked(_class_layers(model), lambda _m, _i, out: captured.append(out)), torch.no_grad():
            model([image])
        shifts.append(_bias_shift(model, captured))
    shift = max(shifts)
    with torch.no_grad():
        if isinstance(model, SSD | FasterRCNN):
            for layer in _class_layers(model):
                layer.bias[0 :: NUM_CLASSES + 1] -= shift  # a lower background logit lets classes pass
        else:
            if isinstance(model, FCOS):
                model.head.regression_head.bbox_ctrness.bias += FCOS_CENTERNESS_BIAS
            _class_layers(model)[0].bias += shift


@contextlib.contextmanager
def _hooked(modules: list[nn.Module], hook):
    """`hook` as a forward hook on each of `modules` for the duration of the block."""
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _bias_shift(model: nn.Module, logits: list[torch.Tensor]) -> float:
    """How far to raise the class logits (or lower the background logit) for one image's
    CANDIDATES_PER_IMAGE best class scores to reach the family's score threshold."""
    if isinstance(model, SSD | FasterRCNN):
        threshold = model.roi_heads.score_thresh if isinstance(model, FasterRCNN) else model.score_thresh
        per_anchor = torch.cat([_per_anchor(out, NUM_CLASSES + 1) for out in logits])
        lowered = torch.zeros(NUM_CLASSES + 1)

        def passing(shift: float) -> int:
            lowered[0] = shift
            return int((torch.softmax(per_anchor - lowered, dim=1)[:, 1:] > threshold).sum())

        # Softmax over background and classes: no closed form, but the count grows with the shift.
        low, high = -50.0, 50.0
        for _ in range(40):
            low, high = (
                ((low + high) / 2, high)
                if passing((low + high) / 2) < CANDIDATES_PER_IMAGE
                else (low, (low + high) / 2)
            )
        return high
    threshold = model.score_thresh
    if isinstance(model, FCOS):
        # FCOS scores sqrt(sigmoid(class) · sigmoid(centerness)); centerness is pushed to ~1.
        threshold **= 2
    flat = torch.cat([out.flatten() for out in logits])
    return math.log(threshold / (1 - threshold)) - float(torch.quantile(flat, 1 - CANDIDATES_PER_IMAGE / flat.numel()))


def _per_anchor(logits: torch.Tensor, columns: int) -> torch.Tensor:
    """Class logits as [anchors or proposals, columns]: a Linear's rows, or an SSD level's
    [N, A·columns, H, W] map (torchvision's SSDScoringHead layout)."""
    if logits.ndim == 2:
        return logits
    n, _, h, w = logits.shape
    return logits.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(-1, columns)


def _fp16_rounded(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with every weight rounded to fp16 as the FP16 IR stores it (BatchNorm
    statistics kept: OpenVINO folds them into the weights before compressing)."""
    return {
        k: v.half().float() if v.is_floating_point() and "running_" not in k else v
        for k, v in model.state_dict().items()
    }


def _tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [S, S, 3] → float 0–1 [3, S, S], as torchvision detectors take images."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def _torch_detections(model: nn.Module, family: Family, images: list[np.ndarray]) -> list[Detections]:
    """PyTorch's own forward (its transform, anchors, postprocess) on S×S images, labels 0-based."""
    with torch.no_grad():
        found = model([_tensor(image) for image in images])
    return [
        Detections(d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy() - int(family.background)) for d in found
    ]


def _mismatches(want: Detections, have: Detections, box_px: float) -> list[str]:
    """Each detection of `want` paired with a distinct one of `have` of the same label whose box
    corners lie within `box_px` and score within SCORE_TOLERANCE; the ones left unpaired, named.
    Pairing ignores order: two detections whose scores differ by less than the tolerance may
    come out of NMS in either order."""
    problems = [f"{len(want.scores)} detections in PyTorch, {len(have.scores)} from the IR"]
    problems = problems if len(want.scores) != len(have.scores) else []
    free = set(range(len(have.scores)))
    for box, score, label in zip(want.boxes, want.scores, want.labels, strict=True):
        fits = [
            i
            for i in free
            if have.labels[i] == label
            and np.abs(have.boxes[i] - box).max() <= box_px
            and abs(have.scores[i] - score) <= SCORE_TOLERANCE
        ]
        if not fits:
            problems.append(f"label {label} score {score:.4f} box {np.round(box, 2).tolist()} has no IR twin")
            continue
        free.remove(min(fits, key=lambda i: np.abs(have.boxes[i] - box).max()))
    return problems


@dataclass(frozen=True)
class Case:
    """One family, built, given detections, saved as a plain state_dict and exported."""

    family: Family
    size: int
    model: nn.Module  # the fp16-rounded weights the checkpoint holds, eval mode
    checkpoint: Path
    config: DetectorConfig
    preprocessing: Preprocessing
    fp16_ir: Path
    frames: list[np.ndarray]  # uint8 S×S: the camera frame and its mirror image, letterboxed
    camera: np.ndarray  # uint8 at CAMERA_SIZE


def _normal_frame(split) -> np.ndarray:
    """The split's first frame shot in normal conditions: on a blurred or dark frame a random
    network's features are weak and its scores flat."""
    conditions = [record["condition"] for record in split.coco["images"]]
    assert "normal" in conditions, f"the split has no frame in normal conditions: {conditions}"
    return split.images[conditions.index("normal")]


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _family_params():
    return [pytest.param(name, marks=[] if name in QUICK else [pytest.mark.slow], id=name) for name in FAMILIES]


@pytest.fixture(scope="module", params=_family_params())
def case(request, eval_split, tmp_path_factory) -> Case:
    family = FAMILIES[request.param]
    size = _size(family)
    out = tmp_path_factory.mktemp(family.name)
    torch.manual_seed(0)
    model = build_model(family.name, NUM_CLASSES, size)
    preprocessing = preprocessing_for(model, size, "letterbox")
    # One scene at camera size, and its mirror image: a random network's scores move with a
    # frame's global statistics, and one bias shift must suit every frame the tests feed it.
    camera = _resized(_normal_frame(eval_split), CAMERA_SIZE)
    frames = [preprocessing.fit(image)[0] for image in (camera, np.ascontiguousarray(camera[:, ::-1]))]
    _with_detections(model, [_tensor(image) for image in frames])
    state = _fp16_rounded(model)
    model.load_state_dict(state)
    checkpoint = out / "plain.pt"
    torch.save(state, checkpoint)
    config = DetectorConfig(
        architecture=family.name, num_classes=NUM_CLASSES, input_size=size, checkpoint=str(checkpoint)
    )
    fp16_ir = ensure_fp16_ir(config, out / "models")
    return Case(family, size, model.eval(), checkpoint, config, preprocessing, fp16_ir, frames, camera)


@pytest.fixture(scope="module")
def int8(case, eval_split, tmp_path_factory) -> tuple[QuantizeResult, dict]:
    """The INT8 IR quantized on the split's first K frames, and what NNCF itself was handed."""
    import nncf

    seen: dict = {}
    real_quantize = nncf.quantize

    def spy(model, dataset, **kwargs):
        seen["items"] = sum(1 for _ in dataset.get_inference_data())
        seen["subset_size"] = kwargs.get("subset_size")
        return real_quantize(model, dataset, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nncf, "quantize", spy)
        result = quantize_ir(
            case.fp16_ir,
            eval_split.images[:K],
            QuantizationConfig(),
            tmp_path_factory.mktemp(f"{case.family.name}-int8"),
        )
    return result, seen


def test_fp16_ir_detects_what_pytorch_detects(case):
    # given the same letterboxed frames, when PyTorch's own forward and the FP16 IR detect
    expected = _torch_detections(case.model, case.family, case.frames)
    got = detect(load_detector(case.fp16_ir), case.frames)
    # then there is something to compare, and every detection has its twin within 1 px and 1e-3
    counts = [len(d.scores) for d in expected]
    assert sum(counts) >= 5, f"{case.family.name}: PyTorch detects {counts}: too few to compare"
    for n, (want, have) in enumerate(zip(expected, got, strict=True)):
        problems = _mismatches(want, have, BOX_TOLERANCE_PX)
        assert not problems, f"{case.family.name} frame {n}: " + "; ".join(problems[:5])


def test_int8_ir_is_calibrated_on_exactly_k_images(case, int8):
    result, seen = int8
    assert result.subset_size == K, f"QuantizeResult says {result.subset_size} images, want {K}"
    assert seen == {"items": K, "subset_size": K}, f"NNCF was handed {seen}, want {K} items and subset_size {K}"
    kinds = {op.get_type_name() for op in ov.Core().read_model(str(result.int8_ir_path)).get_ops()}
    assert "FakeQuantize" in kinds, f"{result.int8_ir_path} holds no quantizers"
    # What is INT8 is the network up to its head tensors; anchors, NMS and RoI heads stay in PyTorch.
    decoding = kinds & {"ROIAlign", "ROIPooling", "NonMaxSuppression", "MulticlassNms", "MatrixNms", "TopK"}
    assert not decoding, f"decoding ops inside the IR: {sorted(decoding)}"
    found = detect(load_detector(result.int8_ir_path), case.frames[:1])
    assert len(found) == 1 and found[0].boxes.shape == (len(found[0].scores), 4), "INT8 IR decodes through its adapter"


def test_evaluation_returns_a_map(case, int8, eval_split):
    split = eval_split.head(K)
    result = evaluate_ir(int8[0].int8_ir_path, split, EvaluationConfig(latency_iterations=1), measure_speed=False)
    assert result.images == K, f"{result.images} images evaluated, want {K}"
    assert 0.0 <= result.map <= result.map50 <= 1.0, f"mAP {result.map}, mAP@.5 {result.map50}"
    assert len(result.per_class) == NUM_CLASSES, f"per-class mAP for {sorted(result.per_class)}"


def test_serving_engine_answers_on_another_image_size(case):
    # given a camera-sized frame, when the FP16 tier serves it
    found = OpenVinoEngine(case.fp16_ir, requests=1).infer(case.camera)
    # then its boxes are PyTorch's on the letterboxed frame, mapped back to the camera's pixels
    fitted, placement = case.preprocessing.fit(case.camera)
    (want,) = _torch_detections(case.model, case.family, [fitted])
    want = Detections(placement.to_original(want.boxes), want.scores, want.labels)
    assert len(want.scores) > 0, f"{case.family.name}: PyTorch detects nothing on the camera frame"
    problems = _mismatches(want, found, BOX_TOLERANCE_PX / placement.scale_x)
    assert not problems, f"{case.family.name}: " + "; ".join(problems[:5])
    width, height = CAMERA_SIZE
    inside = (
        (found.boxes >= 0).all() and (found.boxes[:, 0::2] <= width).all() and (found.boxes[:, 1::2] <= height).all()
    )
    assert inside, f"boxes outside the {width}×{height} frame: {found.boxes.max(axis=0)}"


def test_a_checkpoint_loads_plain_or_under_model(case, tmp_path):
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": torch.load(case.checkpoint, weights_only=True), "epoch": 12}, wrapped)
    for path in (case.checkpoint, wrapped):
        loaded = build_detector(case.config.model_copy(update={"checkpoint": str(path)})).state_dict()
        differ = [k for k, v in case.model.state_dict().items() if not torch.equal(loaded[k], v)]
        assert not differ, f"{path.name}: {len(differ)} tensors differ from the saved ones, e.g. {differ[:3]}"


def test_checkpoints_as_training_recipes_save_them_load_the_same_weights(case, tmp_path):
    # given the weights as a fine-tune from pretrained weights saves them (FrozenBatchNorm2d: no
    # num_batches_tracked), as DataParallel does (`module.`), and as Lightning does (`state_dict`, `model.`)
    state = torch.load(case.checkpoint, weights_only=True)
    frozen = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    saved = {
        "frozen_bn.pt": frozen,
        "data_parallel.pt": {f"module.{k}": v for k, v in state.items()},
        "lightning.pt": {"state_dict": {f"model.{k}": v for k, v in frozen.items()}, "epoch": 3},
    }
    for name, checkpoint in saved.items():
        torch.save(checkpoint, tmp_path / name)
        # when each is built, then it holds the saved weights, and detects as the original does
        loaded = build_detector(case.config.model_copy(update={"checkpoint": str(tmp_path / name)})).state_dict()
        differ = [k for k, v in case.model.state_dict().items() if not torch.equal(loaded[k], v)]
        assert not differ, f"{name}: {len(differ)} tensors differ from the saved ones, e.g. {differ[:3]}"
    # and a prefix that would leave keys the model lacks is not guessed away
    torch.save({f"module.{k}": v for k, v in (state | {"extra.weight": torch.zeros(1)}).items()}, tmp_path / "odd.pt")
    with pytest.raises(DetectorError, match=r"unexpected keys: module\."):
        build_detector(case.config.model_copy(update={"checkpoint": str(tmp_path / "odd.pt")}))


def test_a_checkpoint_that_does_not_fit_names_its_keys(case, tmp_path):
    # given the checkpoint read with two more classes than it was trained for
    with torch.device("meta"):  # shapes only: no weights are allocated or initialised
        other = build_model(case.family.name, NUM_CLASSES + 2, case.size).state_dict()
    own = case.model.state_dict()
    reshaped = sorted(k for k in own if own[k].shape != other[k].shape)
    with pytest.raises(DetectorError) as wrong_classes:
        build_detector(case.config.model_copy(update={"num_classes": NUM_CLASSES + 2}))
    message = str(wrong_classes.value)
    assert "shape mismatch" in message and reshaped[0] in message, f"names {reshaped[0]}: {message}"
    assert "detector.num_classes" in message, f"says which setting to check: {message}"
    # given a checkpoint that lacks a key and holds a foreign one
    state = torch.load(case.checkpoint, weights_only=True)
    dropped = sorted(state)[-1]
    del state[dropped]
    state["extra_head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(DetectorError) as odd:
        build_detector(case.config.model_copy(update={"checkpoint": str(tmp_path / "odd.pt")}))
    message = str(odd.value)
    assert f"missing keys: {dropped}" in message, f"names the missing key {dropped}: {message}"
    assert "unexpected keys: extra_head.weight" in message, f"names the unexpected key: {message}"
