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
- `boxes_scores_labels`: three outputs [1, N, 4] x1 y1 x2 y2, [1, N] scores, [1, N] labels.

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


def _best_class_nms(xywh: np.ndarray, class_scores: np.ndarray, iou: float) -> Detections:
    """[N, 4] cx cy w h and [N, nc] class scores → each box with its best class, after NMS."""
    labels = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(labels)), labels]
    return _nms(_xywh_to_xyxy(xywh), scores, labels, iou)


def _top_k(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
    keep = np.flatnonzero(scores >= SCORE_THRESH)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:MAX_DETECTIONS]
    return Detections(boxes[keep].astype(np.float32), scores[keep].astype(np.float32), labels[keep].astype(np.int64))


class _LayoutDecoder:
    """Shared by the layouts: the spec is the class count; each layout checks and decodes."""

    kind = ""
    preset = "mixed"

    def __init__(self, num_classes: int) -> None:
        self.num_labels = num_classes

    @classmethod
    def from_spec(cls, spec: dict) -> _LayoutDecoder:
        return cls(spec["num_classes"])

    def spec(self) -> dict:
        return {"num_classes": self.num_labels}

    def ignored_scope(self, model) -> list[str]:
        return decode_subgraph(model)

    def expected(self) -> str:
        raise NotImplementedError

    def fits(self, shapes: Sequence[Sequence[int]]) -> bool:
        """Whether output shapes (batch 1) fit this layout and class count."""
        raise NotImplementedError

    def check(self, shapes: Sequence[Sequence[int]]) -> None:
        """Raises DetectorError, naming the expected and the real shapes, unless they fit."""
        if self.fits(shapes):
            return
        found = ", ".join(str(list(s)) for s in shapes)
        raise DetectorError(
            f"detector.output_format {self.kind!r} with detector.num_classes {self.num_labels} expects "
            f"{self.expected()}, but the model's outputs are {found}{_guess(shapes, self.num_labels)}"
        )


class Yolov8Decoder(_LayoutDecoder):
    kind = "yolov8"

    def expected(self) -> str:
        return f"one output [1, {4 + self.num_labels}, N] (4 box values + {self.num_labels} class scores per column)"

    def fits(self, shapes):
        return len(shapes) == 1 and len(shapes[0]) == 3 and shapes[0][1] == 4 + self.num_labels

    def decode(self, outputs):
        # [4+nc, N] per image: transposed, a row per candidate.
        return [_best_class_nms(out.T[:, :4], out.T[:, 4:], iou=0.7) for out in np.asarray(outputs[0], np.float32)]


class Yolov5Decoder(_LayoutDecoder):
    kind = "yolov5"

    def expected(self) -> str:
        nc = self.num_labels
        return f"one output [1, N, {5 + nc}] (4 box values, objectness, {nc} class scores per row)"

    def fits(self, shapes):
        return len(shapes) == 1 and len(shapes[0]) == 3 and shapes[0][2] == 5 + self.num_labels

    def decode(self, outputs):
        # [N, 5+nc] per image: class scores weighted by objectness.
        return [_best_class_nms(r[:, :4], r[:, 5:] * r[:, 4:5], iou=0.6) for r in np.asarray(outputs[0], np.float32)]


class End2EndDecoder(_LayoutDecoder):
    kind = "end2end"

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
        if len(found.labels) and (found.labels.min() < 0 or found.labels.max() >= self.num_labels):
            raise DetectorError(
                f"the end2end model gives class {int(found.labels.max())} but detector.num_classes is "
                f"{self.num_labels}: set num_classes to the model's class count"
            )
        return found


class BoxesScoresLabelsDecoder(End2EndDecoder):
    kind = "boxes_scores_labels"

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

    def decode(self, outputs):
        arrays = [np.asarray(o) for o in outputs]
        box_i, first, second = self._order([a.shape for a in arrays])  # type: ignore[misc]
        # Scores are floats, labels whole numbers: tell them apart by their values, not their order.
        integral = [bool(np.all(np.equal(np.mod(arrays[i], 1), 0))) for i in (first, second)]
        score_i, label_i = (second, first) if integral[0] and not integral[1] else (first, second)
        results = []
        for boxes, scores, labels in zip(arrays[box_i], arrays[score_i], arrays[label_i], strict=True):
            results.append(
                self._checked(_top_k(boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64)))
            )
        return results


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


def import_exported(config: DetectorConfig):
    """Read `config.model` (ONNX or IR), fix its input to [1, 3, S, S], check its outputs against
    `config.output_format`, and record the adapter; returns the `openvino.Model`.

    S is the model's own static input side, or `detector.input_size` (default 640) when the
    export is dynamic. Raises DetectorError for a file OpenVINO cannot read, an input that is
    not one square RGB image batch, a configured size that contradicts the model's, or outputs
    that do not fit the declared layout."""
    import openvino as ov

    path = Path(config.model or "")
    try:
        model = ov.Core().read_model(str(path)) if path.suffix == ".xml" else ov.convert_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure subclasses for unreadable files
        raise DetectorError(f"detector.model {path} cannot be read by OpenVINO ({type(exc).__name__}: {exc})") from None
    if len(model.inputs) != 1:
        raise DetectorError(f"detector.model {path} has {len(model.inputs)} inputs: tailcal feeds one image batch")
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or (shape[1].is_static and shape[1].get_length() != 3):
        raise DetectorError(f"detector.model {path} takes input {shape}: tailcal feeds [N, 3, H, W] RGB images")
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
    decoder = LAYOUTS[config.output_format or ""](config.num_classes)
    decoder.check([[d.get_length() if d.is_static else 1 for d in out.get_partial_shape()] for out in model.outputs])
    preprocessing = Preprocessing(size, config.resize, **YOLO_PREPROCESSING)  # type: ignore[arg-type]
    Adapter(preprocessing, decoder).write_to(model)
    return model
