"""The detector's input contract, applied the same way by every stage that feeds it.

Evaluation, calibration, activation profiles, clipping and serving all decode with
`tasks.imaging` and fit images to the detector's square input through `Preprocessing`:
letterbox (keep the aspect ratio, pad) or stretch to `input_size`, then normalise. Boxes
come back to the original pixel space through each image's `Placement`, so mAP is computed
on the annotations as they are. An FP16-vs-INT8 gap must come from the weights and
activations, never from two slightly different input pipelines.

The contract travels with the detector: `export_ir` writes it into the IR's runtime info and
`Preprocessing.of_model` reads it back, so a stage holding only an IR feeds it correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from tasks.imaging import decode_rgb

# Synthetic frames are grey-ish metal/fabric/boards: ImageNet statistics would be no better.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.25, 0.25, 0.25)
Resize = Literal["letterbox", "stretch"]
_RT_INFO = ("tailcal", "preprocessing")


def preprocess(
    images: Sequence[np.ndarray], mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD
) -> np.ndarray:
    """uint8 RGB [H, W, 3] images of one size → normalised float32 [N, 3, H, W]."""
    batch = np.stack(images).astype(np.float32) / np.float32(255.0)
    batch = (batch - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class Placement:
    """Where an image's pixels went in the detector input: input = original · scale + offset."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int  # the original image's
    height: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """[D, 4] x0 y0 x1 y1 boxes in input pixels → original pixels, clipped to the image."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = np.clip((boxes[:, 0::2] - self.offset_x) / self.scale_x, 0, self.width)
        out[:, 1::2] = np.clip((boxes[:, 1::2] - self.offset_y) / self.scale_y, 0, self.height)
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """[D, 4] boxes in original pixels → input pixels (for training targets)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = boxes[:, 0::2] * self.scale_x + self.offset_x
        out[:, 1::2] = boxes[:, 1::2] * self.scale_y + self.offset_y
        return out


@dataclass(frozen=True)
class Preprocessing:
    """How any image becomes the detector's [1, 3, input_size, input_size] input."""

    input_size: int
    resize: Resize = "letterbox"
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD
    # Letterbox padding colour; unset, the normalisation mean (it reads as 0 after normalising,
    # as torchvision's zero padding of a normalised batch does). YOLO exports pad with 114.
    pad: tuple[int, int, int] | None = None

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """The letterbox padding as uint8 RGB."""
        return self.pad or tuple(round(m * 255) for m in self.mean)  # type: ignore[return-value]

    def fit(self, image: np.ndarray) -> tuple[np.ndarray, Placement]:
        """uint8 RGB [H, W, 3] of any size → uint8 [S, S, 3] and where its pixels went.

        An image already S × S is passed through untouched. Letterbox scales by
        min(S/W, S/H) and centres the result on `pad_color`; stretch scales each axis to S.
        """
        size = self.input_size
        height, width = image.shape[:2]
        if (width, height) == (size, size):
            return image, Placement(1.0, 1.0, 0.0, 0.0, width, height)
        if self.resize == "stretch":
            resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
            return resized, Placement(size / width, size / height, 0.0, 0.0, width, height)
        scale = min(size / width, size / height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
        left, top = (size - new_w) // 2, (size - new_h) // 2
        canvas = np.empty((size, size, 3), np.uint8)
        canvas[:] = self.pad_color
        canvas[top : top + new_h, left : left + new_w] = resized
        return canvas, Placement(new_w / width, new_h / height, float(left), float(top), width, height)

    def batch(self, images: Sequence[np.ndarray | bytes]) -> tuple[np.ndarray, list[Placement]]:
        """Images (arrays or encoded bytes) of any sizes → the normalised float32 [N, 3, S, S]
        batch and each one's placement."""
        fitted = [self.fit(decode_rgb(image)) for image in images]
        return preprocess([f for f, _ in fitted], self.mean, self.std), [p for _, p in fitted]

    def inputs(self, images: Sequence[np.ndarray | bytes]) -> list[np.ndarray]:
        """Each image (array or encoded bytes) as its own [1, 3, S, S] input, in order."""
        return [self.batch([image])[0] for image in images]

    def write_to(self, model) -> None:
        """Record the contract in an `openvino.Model`'s runtime info (kept by NNCF and save_model)."""
        model.set_rt_info(self.resize, [*_RT_INFO, "resize"])
        model.set_rt_info(" ".join(map(str, self.mean)), [*_RT_INFO, "mean"])
        model.set_rt_info(" ".join(map(str, self.std)), [*_RT_INFO, "std"])
        if self.pad is not None:
            model.set_rt_info(" ".join(map(str, self.pad)), [*_RT_INFO, "pad"])

    @classmethod
    def of_model(cls, model) -> Preprocessing:
        """The contract of an `openvino.Model`: its input size, and what `write_to` recorded
        (IRs exported before the contract was recorded get the letterbox default)."""
        size = model.inputs[0].get_partial_shape()[2].get_length()
        if not model.has_rt_info([*_RT_INFO, "resize"]):
            return cls(size)

        def read(key: str) -> str:
            return str(model.get_rt_info([*_RT_INFO, key]).astype(str))

        pad = tuple(int(v) for v in read("pad").split()) if model.has_rt_info([*_RT_INFO, "pad"]) else None
        return cls(
            size,
            read("resize"),  # type: ignore[arg-type]
            tuple(float(v) for v in read("mean").split()),  # type: ignore[arg-type]
            tuple(float(v) for v in read("std").split()),  # type: ignore[arg-type]
            pad,  # type: ignore[arg-type]
        )
