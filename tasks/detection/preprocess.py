"""Pre-processing shared by every way of running the detector (PyTorch, FP16 IR, INT8 IR) and
every stage that feeds it (evaluation, calibration, activation profiles, serving).

One implementation on purpose: an FP16-vs-INT8 mAP gap must come from the weights and
activations, never from two slightly different input pipelines.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Synthetic frames are grey-ish metal/fabric/boards: ImageNet statistics would be no better.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.25, 0.25, 0.25)


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """JPEG/PNG bytes or an array → uint8 RGB [H, W, 3]."""
    if isinstance(data, np.ndarray):
        return data if data.ndim == 3 else np.repeat(data[..., None], 3, axis=2)
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def preprocess(images: list[np.ndarray]) -> np.ndarray:
    """uint8 RGB [H, W, 3] images of one size → normalized float32 [N, 3, H, W]."""
    batch = np.stack(images).astype(np.float32) / np.float32(255.0)
    batch = (batch - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
