"""One interface between tailcal and any detector: fit images to the input, run the IR, decode.

An `Adapter` is a detector's preprocessing contract (`Preprocessing`) plus its `Decoder`
(the IR's output tensors → detections in input pixels). `export` writes both into the IR's
runtime info and `Adapter.of_model` reads them back, so every stage holding an IR —
evaluation, calibration, activation profiles, clipping, serving, drift — runs any family
through the same calls and none of them branches on the family. The NNCF recipe a layout
needs (which subgraph stays in float, which preset) comes from the decoder too.

Decoders live beside their family: torchvision families in `tasks.detection.families`,
exported YOLO-style layouts in `tasks.detection.exported`.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tasks.detection.postprocess import Detections
from tasks.detection.preprocess import Preprocessing
from tasks.errors import TailcalError

_RT_INFO = ("tailcal", "decoder")
# Decoder kind → "module:class"; imported on first use (the torchvision decoders pull in torch).
_DECODERS = {
    "torchvision": "tasks.detection.families:TorchvisionDecoder",
    "two_stage": "tasks.detection.families:TwoStageDecoder",
    "yolov8": "tasks.detection.exported:Yolov8Decoder",
    "yolov5": "tasks.detection.exported:Yolov5Decoder",
    "end2end": "tasks.detection.exported:End2EndDecoder",
    "boxes_scores_labels": "tasks.detection.exported:BoxesScoresLabelsDecoder",
}


class DetectorError(TailcalError):
    """The detector cannot be built, loaded, exported or decoded as configured."""


class Decoder(Protocol):
    """The IR's outputs → detections. `spec()` is what the IR records; `from_spec` rebuilds it."""

    kind: str
    num_labels: int  # labels come out as 0 … num_labels − 1 (background, if any, already removed)

    def decode(self, outputs: Sequence[np.ndarray]) -> list[Detections]:
        """The IR's output tensors for a batch of N images, in the IR's output order → N
        detections with boxes [x0, y0, x1, y1] in input pixels."""
        ...

    def spec(self) -> dict: ...

    def ignored_scope(self, model) -> list[str]:
        """Names of the ops of `model` (an openvino.Model) NNCF must keep in float."""
        ...

    @property
    def preset(self) -> str:
        """The NNCF preset this layout quantizes well with ('performance' or 'mixed')."""
        ...


@dataclass(frozen=True)
class Adapter:
    """How images become the IR's input, and how its outputs become detections."""

    preprocessing: Preprocessing
    decoder: Decoder

    def write_to(self, model) -> None:
        """Record the contract in an `openvino.Model`'s runtime info (NNCF and save_model keep it)."""
        self.preprocessing.write_to(model)
        model.set_rt_info(
            json.dumps({"kind": self.decoder.kind, **self.decoder.spec()}, sort_keys=True), list(_RT_INFO)
        )

    @classmethod
    def of_model(cls, model, source: object = "the IR") -> Adapter:
        """The contract an `openvino.Model` records. Raises DetectorError for an IR that records no
        decoder (exported by an older tailcal, or not by tailcal): export it again."""
        if not model.has_rt_info(list(_RT_INFO)):
            raise DetectorError(
                f"{source} records no decoder: it was not exported by this tailcal; export it again "
                "(delete it and rerun, or point detector.model at the original ONNX/IR)"
            )
        return cls(Preprocessing.of_model(model), decoder_from_spec(str(model.get_rt_info(list(_RT_INFO)).astype(str))))

    def detect_with(self, run, images: Sequence[np.ndarray | bytes], batch_size: int = 16) -> list[Detections]:
        """Images (uint8 RGB arrays or encoded bytes, any sizes) → detections in each image's own
        pixels: fit each to the input, `run(batch)` → the IR's outputs, decode, map boxes back."""
        detections: list[Detections] = []
        for start in range(0, len(images), batch_size):
            batch, placements = self.preprocessing.batch(images[start : start + batch_size])
            decoded = self.decoder.decode(run(batch))
            detections.extend(
                Detections(placement.to_original(found.boxes), found.scores, found.labels)
                for found, placement in zip(decoded, placements, strict=True)
            )
        return detections


@functools.lru_cache(maxsize=16)  # a torchvision decoder builds a model skeleton: once per IR contract
def decoder_from_spec(text: str) -> Decoder:
    """The decoder a recorded spec (JSON with a `kind`) describes."""
    spec = json.loads(text)
    kind = spec.pop("kind")
    if kind not in _DECODERS:
        raise DetectorError(f"the IR records decoder {kind!r}, which this tailcal does not know: export it again")
    module, name = _DECODERS[kind].split(":")
    return getattr(importlib.import_module(module), name).from_spec(spec)
