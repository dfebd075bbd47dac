"""Detections, the one result type every detector path returns (PyTorch, FP16 IR, INT8 IR, serving).

Decoding itself is the family's (`tasks.detection.adapter.Decoder`): torchvision's own
`postprocess_detections` for the torchvision families, the layout's decoder for exported
models. One decoder per family, shared by every path, so an FP16-vs-INT8 gap comes from the
weights and activations, never from two slightly different decoders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one image: boxes as [x0, y0, x1, y1] pixels, labels 0-based class indices."""

    boxes: np.ndarray  # float32 [D, 4]
    scores: np.ndarray  # float32 [D]
    labels: np.ndarray  # int64 [D]
