"""Exported detectors (ONNX or OpenVINO IR) with a declared output layout, YOLO-style.

`detector.model` points at the file and `detector.output_format` declares what its outputs
mean; the declaration is checked against the model's output shapes when it is imported, and
a mismatch names both. Layouts (N candidate boxes, nc classes, boxes in input pixels):

- `yolov8` (also YOLO11): one output [1, 4+nc, N]: cx, cy, w, h, then per-class scores
  (sigmoid already applied, no objectness). Decoded as Ultralytics' validator does: best
  class per box, class-wise NMS at IoU 0.7, score ≥ 0.001, at most 300 boxes.
- `yolov5`: one output [1, N, 5+nc]: cx, cy, w, h, objectness, class scores; score =
  objectness × class score; NMS at IoU 0.6 (YOLOv5's val.py), score ≥ 0.001, 300 boxes.
- `end2end`: one output [1, N, 6]: x1, y1, x2, y2, score, class; NMS already in the model.
- `boxes_scores_labels`: three outputs [1, N, 4] x1 y1 x2 y2, [1, N] scores, [1, N] labels, in
  any order; which is which is decided at import from element types and names, and recorded.

The input must be one float [N, 3, H, W] image batch: channels last, or an integer input
(preprocessing baked into the graph), is refused at import. At decode, values the shapes could
not rule out are refused when they prove the declared layout wrong: kept scores above 1, corners
out of order, every kept box within 0–1.5 (normalised coordinates, not input pixels).

Preprocessing is the YOLO exporters': letterbox to the square input on grey 114, RGB, pixel
values scaled to 0–1 (no mean/std). No Ultralytics code or dependency (it is AGPL).

Quantization recipe (as NNCF's YOLOv8 example and Ultralytics' INT8 export do): the
box-decoding subgraph — everything downstream of the first reshape of each head
convolution's output (grids, DFL, sigmoid, concatenations, NMS) — stays in float, and the
`mixed` preset (asymmetric activations: SiLU outputs are not symmetric around 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tasks.config import DetectorConfig
from tasks.detection.adapter import Adapter, DetectorError
from tasks.detection.postprocess import Detections
from tasks.detection.preprocess import Preprocessing

# Ultralytics' letterbox colour and 0–1 scaling.
YOLO_PREPROCESSING = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "pad": (114, 114, 114)}
SCORE_THRESH = 0.001  # what YOLO validators use for mAP
MAX_DETECTIONS = 300
# Standard side for an exported model whose input size is dynamic.
DEFAULT_SIZE = 640
# Decode-time checks (`_LayoutDecoder._refuse_implausible`): kept scores may exceed 1 by this much
# (float rounding); boxes all within NORMALISED_MAX are taken for 0–1 coordinates at an input of
# at least MIN_PIXEL_SIDE px; x2 < x1 counts only beyond this share of the coordinates' size.
SCORE_TOLERANCE = 1e-3
NORMALISED_MAX = 1.5
MIN_PIXEL_SIDE = 32
CORNER_TOLERANCE = 1e-3


_FLOAT_TYPES = {"f16", "bf16", "f32", "f64"}  # OpenVINO's element type names
_INTEGER_TYPES = {"i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"}


class ModelOutput(NamedTuple):
    """What import reads of one model output: its names, element type (OpenVINO's: f32, i64 …) and
    shape (a dynamic dimension as 1)."""

    name: str
    element_type: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name!r} ({self.element_type} {list(self.shape)})"


def _nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> Detections:
    """Class-wise NMS (torchvision's `batched_nms`), best first, at most MAX_DETECTIONS."""
    import torch
    from torchvision.ops import batched_nms

    keep_score = scores >= SCORE_THRESH
    boxes, scores, labels = boxes[keep_score], scores[keep_score], labels[keep_score]
    kept = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou)
    kept = kept[:MAX_DETECTIONS].numpy()
    return Detections(boxes[kept].astype(np.float32), scores[kept].astype(np.float32), labels[kept].astype(np.int64))


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    centre, half = xywh[:, :2], xywh[:, 2:4] / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def _top_k(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
    keep = np.flatnonzero(scores >= SCORE_THRESH)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:MAX_DETECTIONS]
    return Detections(boxes[keep].astype(np.float32), scores[keep].astype(np.float32), labels[keep].astype(np.int64))


class _LayoutDecoder:
    """Shared by the layouts: the spec is the class count and the input side; each layout checks
    its output shapes at import and decodes, and every decode refuses values that prove the
    declared layout wrong (`_refuse_implausible`)."""

    kind = ""
    preset = "mixed"
    # Why kept scores above 1 most likely mean, per layout.
    score_cause = ""

    def __init__(self, num_classes: int, input_size: int | None = None) -> None:
        self.num_labels = num_classes
        self.input_size = input_size  # the IR's input side; None in an IR from an older tailcal

    @classmethod
    def from_spec(cls, spec: dict) -> _LayoutDecoder:
        return cls(spec["num_classes"], spec.get("input_size"))

    def spec(self) -> dict:
        return {"num_classes": self.num_labels, "input_size": self.input_size}

    def ignored_scope(self, model) -> list[str]:
        return decode_subgraph(model)

    def expected(self) -> str:
        raise NotImplementedError

    def fits(self, shapes: Sequence[Sequence[int]]) -> bool:
        """Whether output shapes (batch 1) fit this layout and class count."""
        raise NotImplementedError

    def for_outputs(self, outputs: Sequence[ModelOutput], input_size: int | None = None) -> _LayoutDecoder:
        """The decoder for a model with these outputs and input side, as its IR records it: the
        shapes checked (DetectorError unless they fit) and anything only the model tells decided
        once, here."""
        self.check([o.shape for o in outputs])
        return type(self)(self.num_labels, input_size)

    def _refuse_implausible(self, boxes: np.ndarray, scores: np.ndarray, corners: bool, cause: str = "") -> None:
        """Raises DetectorError, naming detector.output_format and the likely cause, when one image's
        kept candidates (score ≥ SCORE_THRESH; `boxes` [K, 4] x1 y1 x2 y2 if `corners`, else cx cy
        w h; `scores` [K]) prove the declared layout wrong where the shapes could not: scores above
        1, corners out of order, every box within 0–1.5 (normalised, not in input pixels), or a
        NaN or infinite coordinate (NMS would drop or keep such a box at random, and mAP would fall
        without an error). NaN scores are never kept."""
        if not len(scores):
            return
        setting = f"detector.output_format {self.kind!r}"
        top = float(scores.max())
        if top > 1 + SCORE_TOLERANCE:
            raise DetectorError(f"{setting}: the model gives scores outside 0–1 (up to {top:.4g}): {cause}")
        broken, example = _marked(boxes, ~np.isfinite(boxes).all(axis=1))
        if broken:
            raise DetectorError(
                f"{setting}: {broken} of {len(boxes)} kept boxes have NaN or infinite coordinates (e.g. "
                f"{example}): the exported model computes them (an FP16 overflow or a division by zero in its "
                "box decoding, say); re-export it in FP32 and check its output in its own runtime"
            )
        if corners:
            tolerance = CORNER_TOLERANCE * np.maximum(np.abs(boxes[:, :2]), np.abs(boxes[:, 2:]))
            flipped, example = _marked(boxes, (boxes[:, 2:] < boxes[:, :2] - tolerance).any(axis=1))
            if flipped:
                raise DetectorError(
                    f"{setting}: boxes are not x1 y1 x2 y2 (x2 < x1 or y2 < y1 in {flipped} of {len(boxes)} "
                    f"kept boxes, e.g. {example}): the model may give x, y, w, h; {self.kind} needs corners in "
                    "input pixels: convert them in the model, or set detector.output_format to its layout"
                )
        side = self.input_size or DEFAULT_SIZE
        if side >= MIN_PIXEL_SIDE and float(np.abs(boxes).max()) <= NORMALISED_MAX:
            raise DetectorError(
                f"{setting}: boxes look normalised to 0–1 (all {len(boxes)} kept boxes lie within 0–{NORMALISED_MAX} "
                f"at a {side} px input); {self.kind} gives them in input pixels: export the model with pixel boxes"
            )

    def _best_class_nms(self, xywh: np.ndarray, class_scores: np.ndarray, iou: float, cause: str) -> Detections:
        """[N, 4] cx cy w h and [N, nc] class scores → each box with its best class, after NMS."""
        labels = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(labels)), labels]
        kept = scores >= SCORE_THRESH
        self._refuse_implausible(xywh[kept], scores[kept], corners=False, cause=cause)
        return _nms(_xywh_to_xyxy(xywh), scores, labels, iou)

    def check(self, shapes: Sequence[Sequence[int]]) -> None:
        """Raises DetectorError, naming the expected and the real shapes, unless they fit."""
        if self.fits(shapes):
            return
        found = ", ".join(str(list(s)) for s in shapes)
        raise DetectorError(
            f"detector.output_format {self.kind!r} with detector.num_classes {self.num_labels} expects "
            f"{self.expected()}, but the model's outputs are {found}{_guess(shapes, self.num_labels)}"
        )


def _marked(boxes: np.ndarray, mask: np.ndarray) -> tuple[int, list[float]]:
    """How many rows of `boxes` [K, 4] `mask` [K] marks, and the first of them rounded to 0.1 (an
    example for an error message; [] when none)."""
    rows = np.flatnonzero(mask)
    return len(rows), [round(float(v), 1) for v in boxes[rows[0]]] if len(rows) else []


class Yolov8Decoder(_LayoutDecoder):
    """[1, 4+nc, N], as Ultralytics exports it. A square output (N = 4+nc, e.g. 80 classes at
    imgsz 64) fits its transpose [1, N, 4+nc] too; it is read as Ultralytics' and a transposed one
    is refused at decode: read that way, its box coordinates land among the class scores (> 1)."""

    kind = "yolov8"
    score_cause = "the class scores may be logits (no sigmoid in the model)"

    def expected(self) -> str:
        return f"one output [1, {4 + self.num_labels}, N] (4 box values + {self.num_labels} class scores per column)"

    def fits(self, shapes):
        return len(shapes) == 1 and len(shapes[0]) == 3 and shapes[0][1] == 4 + self.num_labels

    def decode(self, outputs):
        # [4+nc, N] per image: transposed, a row per candidate.
        batch = np.asarray(outputs[0], np.float32)
        cause = self.score_cause
        if batch.shape[1] == batch.shape[2]:
            cause += (
                f", or the output is [1, N, {batch.shape[2]}] (a row per candidate), which its square shape cannot "
                f"tell from [1, {batch.shape[1]}, N]: export it as [1, 4+nc, N], as Ultralytics does"
            )
        return [self._best_class_nms(out.T[:, :4], out.T[:, 4:], 0.7, cause) for out in batch]


class Yolov5Decoder(_LayoutDecoder):
    kind = "yolov5"
    score_cause = "the objectness and class scores may be logits (no sigmoid in the model)"

    def expected(self) -> str:
        nc = self.num_labels
        return f"one output [1, N, {5 + nc}] (4 box values, objectness, {nc} class scores per row)"

    def fits(self, shapes):
        return len(shapes) == 1 and len(shapes[0]) == 3 and shapes[0][2] == 5 + self.num_labels

    def decode(self, outputs):
        # [N, 5+nc] per image: class scores weighted by objectness.
        batch = np.asarray(outputs[0], np.float32)
        return [self._best_class_nms(r[:, :4], r[:, 5:] * r[:, 4:5], 0.6, self.score_cause) for r in batch]


class End2EndDecoder(_LayoutDecoder):
    kind = "end2end"
    score_cause = "are the score and class columns swapped? end2end rows are x1, y1, x2, y2, score, class"

    def expected(self) -> str:
        return "one output [1, N, 6] (x1, y1, x2, y2, score, class per row)"

    def fits(self, shapes):
        return len(shapes) == 1 and len(shapes[0]) == 3 and shapes[0][2] == 6

    def decode(self, outputs):
        results = []
        for rows in np.asarray(outputs[0], np.float32):
            results.append(_top_k(rows[:, :4], rows[:, 4], np.rint(rows[:, 5]).astype(np.int64)))
        return [self._checked(found) for found in results]

    def _checked(self, found: Detections) -> Detections:
        """The kept detections of one image, refused when their values prove the layout wrong."""
        self._refuse_implausible(found.boxes, found.scores, corners=True, cause=self.score_cause)
        if len(found.labels) and (found.labels.min() < 0 or found.labels.max() >= self.num_labels):
            bad = int(found.labels.min()) if found.labels.min() < 0 else int(found.labels.max())
            raise DetectorError(
                f"the {self.kind} model gives class {bad} but detector.num_classes is "
                f"{self.num_labels}: set num_classes to the model's class count"
            )
        return found


class BoxesScoresLabelsDecoder(End2EndDecoder):
    """Three outputs in any order. Which is the scores and which the labels is decided once, at
    import, from their element types and names (never per batch from the values: scores that are
    all exactly 0 or 1 look like labels), and recorded in the spec as `outputs`."""

    kind = "boxes_scores_labels"
    score_cause = "are the scores and labels outputs swapped? name them scores and labels in the export"

    def __init__(
        self, num_classes: int, input_size: int | None = None, *, outputs: dict[str, int] | None = None
    ) -> None:
        super().__init__(num_classes, input_size)
        self.outputs = outputs  # {"boxes": i, "scores": j, "labels": k}: output indices, decided at import

    @classmethod
    def from_spec(cls, spec: dict) -> BoxesScoresLabelsDecoder:
        if "outputs" not in spec:
            raise DetectorError(
                "the IR records a boxes_scores_labels decoder without which output holds the scores and which the "
                "labels: it was exported by an older tailcal; export it again (delete it and rerun, or point "
                "detector.model at the original ONNX/IR)"
            )
        return cls(spec["num_classes"], spec.get("input_size"), outputs=dict(spec["outputs"]))

    def spec(self) -> dict:
        return super().spec() | {"outputs": self.outputs}

    def expected(self) -> str:
        return "three outputs: boxes [1, N, 4], scores [1, N], labels [1, N] (in any order)"

    def fits(self, shapes):
        return len(shapes) == 3 and self._order(shapes) is not None

    @staticmethod
    def _order(shapes) -> tuple[int, int, int] | None:
        boxes = [i for i, s in enumerate(shapes) if len(s) == 3 and s[2] == 4]
        flat = [i for i, s in enumerate(shapes) if len(s) == 2]
        if len(boxes) != 1 or len(flat) != 2:
            return None
        return boxes[0], flat[0], flat[1]

    def for_outputs(self, outputs, input_size=None):
        self.check([o.shape for o in outputs])
        box_i, first, second = self._order([o.shape for o in outputs])  # type: ignore[misc]
        label_i, score_i = (first, second) if _holds_labels(outputs[first], outputs[second]) else (second, first)
        if outputs[score_i].element_type not in _FLOAT_TYPES:
            raise DetectorError(
                f"detector.output_format 'boxes_scores_labels': the scores output {outputs[score_i]} is not float: "
                "scores are float 0–1; re-export the model with float scores"
            )
        return type(self)(self.num_labels, input_size, outputs={"boxes": box_i, "scores": score_i, "labels": label_i})

    def decode(self, outputs):
        if self.outputs is None:
            raise DetectorError(
                "a boxes_scores_labels decoder decodes only once import has decided which output is which: "
                "point detector.model at the model"
            )
        boxes, scores, labels = (np.asarray(outputs[self.outputs[k]]) for k in ("boxes", "scores", "labels"))
        return [
            self._checked(_top_k(b.astype(np.float32), s.astype(np.float32), np.rint(lab).astype(np.int64)))
            for b, s, lab in zip(boxes, scores, labels, strict=True)
        ]


_LABEL_WORDS = ("label", "class", "cls")
_SCORE_WORDS = ("score", "conf", "prob")


def _says(name: str) -> str | None:
    """'labels' or 'scores' when an output's name says which (and not both), else None."""
    name = name.lower()
    label, score = any(w in name for w in _LABEL_WORDS), any(w in name for w in _SCORE_WORDS)
    return "labels" if label and not score else "scores" if score and not label else None


def _holds_labels(first: ModelOutput, second: ModelOutput) -> bool:
    """Whether `first` of two [1, N] outputs holds the labels and `second` the scores: the integer
    one is the labels, and so is one named label/class beside one that is not (or one not named
    score/conf beside one that is). Raises DetectorError when neither tells, or they disagree."""
    verdicts: dict[str, bool] = {}  # what each clue says of "first holds the labels"
    integer = (first.element_type in _INTEGER_TYPES, second.element_type in _INTEGER_TYPES)
    if integer[0] != integer[1]:
        verdicts["element types"] = integer[0]
    said = (_says(first.name), _says(second.name))
    if (said[0] == "labels") != (said[1] == "labels"):
        verdicts["names"] = said[0] == "labels"
    elif (said[0] == "scores") != (said[1] == "scores"):
        verdicts["names"] = said[1] == "scores"
    both = f"outputs {first} and {second}"
    fix = (
        "re-export the model with integer labels, or with output names that say which is which "
        "(e.g. torch.onnx.export(..., output_names=['boxes', 'scores', 'labels']))"
    )
    if not verdicts:
        raise DetectorError(
            f"detector.output_format 'boxes_scores_labels': cannot tell which of the {both} holds the scores and "
            f"which the labels (neither is integer alone, and no name says label/class or score/conf); {fix}"
        )
    if len(set(verdicts.values())) > 1:
        by_type = first if verdicts["element types"] else second
        by_name = first if verdicts["names"] else second
        raise DetectorError(
            f"detector.output_format 'boxes_scores_labels': of the {both}, the element types say {by_type.name!r} "
            f"holds the labels but the names say {by_name.name!r} does; {fix}"
        )
    return next(iter(verdicts.values()))


LAYOUTS = {d.kind: d for d in (Yolov8Decoder, Yolov5Decoder, End2EndDecoder, BoxesScoresLabelsDecoder)}


def _guess(shapes: Sequence[Sequence[int]], num_classes: int) -> str:
    """A hint at what the outputs look like, when one layout fits them."""
    fits = [kind for kind, decoder in LAYOUTS.items() if decoder(num_classes).fits(shapes)]
    if fits:
        return f", which fits {' or '.join(repr(k) for k in fits)}: set detector.output_format to it"
    if len(shapes) == 1 and len(shapes[0]) == 3:
        # Candidates far outnumber box values + classes: the longer axis is N.
        a, b = shapes[0][1], shapes[0][2]
        if 4 < a < b:
            return f"; as yolov8 ([1, 4+nc, N]) it would have num_classes {a - 4}: check detector.num_classes"
        if 5 < b < a:
            return f"; as yolov5 ([1, N, 5+nc]) it would have num_classes {b - 5}: check detector.num_classes"
    return ""


def decode_subgraph(model) -> list[str]:
    """Friendly names of the ops downstream of the first Reshape that follows a Convolution on
    any path to an output: the box-decoding part of a YOLO-style head, kept in float.

    A walk over the graph (topological order); no library finds this subgraph for an arbitrary
    export, so it is written here. For an IR that ends at the head's convolutions it is empty."""
    after_conv: set[str] = set()
    decoding: set[str] = set()
    for op in model.get_ordered_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        parents = {value.get_node().get_friendly_name() for value in op.input_values()}
        if parents & decoding or (kind == "Reshape" and parents & after_conv):
            decoding.add(name)
        elif kind == "Convolution" or parents & after_conv:
            after_conv.add(name)
    return sorted(n for n in decoding if not n.startswith("Constant") and n not in _outputs(model))


def _outputs(model) -> set[str]:
    return {out.get_node().get_friendly_name() for out in model.outputs}


def _check_input(image, path: Path) -> None:
    """Refuses an input tailcal's images would not fit: not [N, 3, H, W] (channels last above all,
    whose H and W, dynamic or not, would be read as channels and a 3 px side), or not float
    (preprocessing baked into the graph: the 0–1 floats would be cast to a black image)."""
    shape, name = image.get_partial_shape(), image.get_any_name() if image.get_names() else "input"
    element = image.get_element_type()
    if not element.is_real():
        raise DetectorError(
            f"detector.model {path} takes input {name!r} of element type {element.get_type_name()}: tailcal feeds "
            "float 0–1 RGB images [N, 3, H, W], as YOLO exporters write them; re-export the model without the "
            "preprocessing baked in (a float32 input, no cast or /255 in the graph)"
        )
    if shape.rank.is_dynamic or shape.rank.get_length() != 4:
        raise DetectorError(
            f"detector.model {path} takes input {name!r} {shape}: tailcal feeds [N, 3, H, W] RGB images; "
            "re-export it with one image-batch input"
        )
    channels_first = shape[1].is_static and shape[1].get_length() == 3
    if not channels_first and shape[3].is_static and shape[3].get_length() == 3:
        raise DetectorError(
            f"detector.model {path} takes input {name!r} {shape}, channels last (NHWC): tailcal feeds [N, 3, H, W] "
            "RGB images, channels first as YOLO exporters write them; re-export it channels first"
        )
    if shape[1].is_static and not channels_first:
        raise DetectorError(
            f"detector.model {path} takes input {name!r} {shape}: tailcal feeds [N, 3, H, W] RGB images; "
            "re-export it with a 3-channel RGB input"
        )


def import_exported(config: DetectorConfig):
    """Read `config.model` (ONNX or IR), fix its input to [1, 3, S, S], check its outputs against
    `config.output_format`, and record the adapter; returns the `openvino.Model`.

    S is the model's own static input side, or `detector.input_size` (default 640) when the
    export is dynamic. Raises DetectorError for a file OpenVINO cannot read, an input that is
    not one square float RGB image batch (NCHW), a configured size that contradicts the model's, or outputs
    that do not fit the declared layout."""
    import openvino as ov

    path = Path(config.model or "")
    try:
        model = ov.Core().read_model(str(path)) if path.suffix == ".xml" else ov.convert_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure subclasses for unreadable files
        raise DetectorError(f"detector.model {path} cannot be read by OpenVINO ({type(exc).__name__}: {exc})") from None
    if len(model.inputs) != 1:
        raise DetectorError(f"detector.model {path} has {len(model.inputs)} inputs: tailcal feeds one image batch")
    _check_input(model.inputs[0], path)
    shape = model.inputs[0].get_partial_shape()
    static = [shape[i].get_length() for i in (2, 3) if shape[i].is_static]
    if len(static) == 2 and static[0] != static[1]:
        raise DetectorError(
            f"detector.model {path} takes a {static[1]}×{static[0]} input: export it with a square input (imgsz=S)"
        )
    size = static[0] if static else (config.input_size or DEFAULT_SIZE)
    if static and config.input_size and config.input_size != size:
        raise DetectorError(
            f"detector.input_size {config.input_size} contradicts {path}'s fixed {size} px input: unset input_size"
        )
    # The batch stays what the exporter made it: a traced graph often bakes batch 1 into its
    # reshapes, which a dynamic batch would only reveal at inference. Batch 1 runs image by image.
    batch = -1 if shape[0].is_dynamic else shape[0].get_length()
    try:
        model.reshape({model.inputs[0]: ov.PartialShape([batch, 3, size, size])})
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise DetectorError(
            f"detector.model {path} cannot run at {size}×{size} px ({first}): its input size is dynamic but its "
            "graph is not; set detector.input_size to the size it was exported for"
        ) from None
    outputs = [
        ModelOutput(
            ", ".join(sorted(out.get_names())) or f"output {i}",
            out.get_element_type().get_type_name(),
            tuple(d.get_length() if d.is_static else 1 for d in out.get_partial_shape()),
        )
        for i, out in enumerate(model.outputs)
    ]
    decoder = LAYOUTS[config.output_format or ""](config.num_classes).for_outputs(outputs, size)
    preprocessing = Preprocessing(size, config.resize, **YOLO_PREPROCESSING)  # type: ignore[arg-type]
    Adapter(preprocessing, decoder).write_to(model)
    return model
