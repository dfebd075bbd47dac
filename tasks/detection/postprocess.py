"""Post-processing shared by every way of running the detector (PyTorch, FP16 IR, INT8 IR).

One implementation on purpose: an FP16-vs-INT8 mAP gap must come from the weights and
activations, never from two slightly different decoders. It mirrors torchvision's
`FCOS.postprocess_detections` (score = sqrt(sigmoid(cls)·sigmoid(ctrness)), top-k per
level, linear box decoding normalized by anchor size, class-wise NMS).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms, clip_boxes_to_image

from tasks.detection.model import ANCHOR_SIZES, STRIDES


@dataclass(frozen=True)
class Detections:
    """Detections of one image: boxes as [x0, y0, x1, y1] pixels, labels 0-based class indices."""

    boxes: np.ndarray  # float32 [D, 4]
    scores: np.ndarray  # float32 [D]
    labels: np.ndarray  # int64 [D]


@dataclass(frozen=True)
class PostprocessParams:
    """Decoder thresholds; mAP wants a low score threshold and many detections."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    topk_candidates: int = 1000
    detections_per_img: int = 100


DEFAULT_PARAMS = PostprocessParams()


@functools.cache
def level_sizes(input_size: int) -> tuple[int, ...]:
    """Locations per FPN level for a square input (conv arithmetic: ceil halving per stride-2 conv)."""
    sizes = []
    for stride in STRIDES:
        side = input_size
        for _ in range(int(np.log2(stride))):
            side = (side + 1) // 2
        sizes.append(side * side)
    return tuple(sizes)


@functools.cache  # per input size, once: serving decodes one image per call (0.6 ms each otherwise)
def anchors_for(input_size: int) -> torch.Tensor:
    """FCOS anchor boxes [A, 4] in torchvision's AnchorGenerator layout (top-left aligned, row-major).
    Shared and cached: callers only index it, never write to it."""
    per_level = []
    for stride, size in zip(STRIDES, ANCHOR_SIZES, strict=True):
        side = round(np.sqrt(level_sizes(input_size)[STRIDES.index(stride)]))
        ys, xs = torch.meshgrid(torch.arange(side) * stride, torch.arange(side) * stride, indexing="ij")
        centers = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float()
        half = round(size / 2)
        per_level.append(torch.cat([centers - half, centers + half], dim=1))
    return torch.cat(per_level)


def decode_batch(
    cls_logits: np.ndarray | torch.Tensor,
    bbox_regression: np.ndarray | torch.Tensor,
    bbox_ctrness: np.ndarray | torch.Tensor,
    input_size: int,
    params: PostprocessParams = DEFAULT_PARAMS,
) -> list[Detections]:
    """Raw head tensors [N, A, C], [N, A, 4], [N, A, 1] → detections per image."""
    cls_logits, bbox_regression, bbox_ctrness = (
        torch.as_tensor(np.asarray(t, dtype=np.float32)) for t in (cls_logits, bbox_regression, bbox_ctrness)
    )
    anchors = anchors_for(input_size)
    splits = level_sizes(input_size)
    if anchors.shape[0] != cls_logits.shape[1]:
        raise ValueError(f"head gives {cls_logits.shape[1]} locations, {input_size}px input needs {anchors.shape[0]}")
    results = []
    for logits, regression, ctrness in zip(cls_logits, bbox_regression, bbox_ctrness, strict=True):
        boxes_all, scores_all, labels_all = [], [], []
        for lvl_logits, lvl_reg, lvl_ctr, lvl_anchors in zip(
            logits.split(splits), regression.split(splits), ctrness.split(splits), anchors.split(splits), strict=True
        ):
            num_classes = lvl_logits.shape[-1]
            scores = torch.sqrt(torch.sigmoid(lvl_logits) * torch.sigmoid(lvl_ctr)).flatten()
            keep = torch.where(scores > params.score_thresh)[0]
            scores = scores[keep]
            scores, order = scores.topk(min(params.topk_candidates, scores.numel()))
            keep = keep[order]
            anchor_idx = torch.div(keep, num_classes, rounding_mode="floor")
            boxes_all.append(_decode_boxes(lvl_reg[anchor_idx], lvl_anchors[anchor_idx], input_size))
            scores_all.append(scores)
            labels_all.append(keep % num_classes)
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        kept = batched_nms(boxes, scores, labels, params.nms_thresh)[: params.detections_per_img]
        results.append(Detections(boxes[kept].numpy(), scores[kept].numpy(), labels[kept].numpy().astype(np.int64)))
    return results


def _decode_boxes(regression: torch.Tensor, anchors: torch.Tensor, input_size: int) -> torch.Tensor:
    # torchvision's BoxLinearCoder(normalize_by_size=True): ltrb distances in anchor-size units.
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    size = (anchors[:, 2:] - anchors[:, :2]).repeat(1, 2)
    offsets = regression * size
    boxes = torch.cat([centers - offsets[:, :2], centers + offsets[:, 2:]], dim=1)
    return clip_boxes_to_image(boxes, (input_size, input_size))
