"""Tiny detectors with the output layouts YOLO exporters write, built here (no Ultralytics: AGPL).

Each is a two-level conv net whose head convolutions are reshaped and decoded in the graph,
as an exported YOLO model is: the decode subgraph (grids, sigmoid, exp) follows the first
reshape of each head convolution's output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

STRIDES = (8, 16)


class _TwoLevel(nn.Module):
    def __init__(self, outputs_per_cell: int, size: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1)
        )
        self.down = nn.Sequential(nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.heads = nn.ModuleList([nn.Conv2d(32, outputs_per_cell, 1) for _ in STRIDES])
        centres, strides = [], []
        for stride in STRIDES:
            side = size // stride
            ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
            centres.append(torch.stack([xs.flatten(), ys.flatten()]).float().add(0.5).mul(stride))
            strides.append(torch.full((1, side * side), float(stride)))
        self.register_buffer("centres", torch.cat(centres, 1))  # [2, N]
        self.register_buffer("strides", torch.cat(strides, 1))  # [1, N]

    def raw(self, x: Tensor) -> Tensor:
        """[B, C, N]: each level's head output reshaped to cells, the levels concatenated."""
        p3 = self.stem(x)
        p4 = self.down(p3)
        return torch.cat([head(f).flatten(2) for head, f in zip(self.heads, (p3, p4), strict=True)], 2)

    def boxes(self, raw: Tensor) -> Tensor:
        """[B, 4, N] cx, cy, w, h in input pixels."""
        xy = self.centres + torch.tanh(raw[:, :2]) * self.strides
        wh = torch.exp(raw[:, 2:4].clamp(-3, 3)) * self.strides * 2
        return torch.cat([xy, wh], 1)


class Yolov8Like(_TwoLevel):
    """[B, 3, S, S] in 0–1 → [B, 4 + nc, N]: cx, cy, w, h, sigmoid class scores (no objectness).

    Boxes are decoded as YOLOv8 does: per side a distribution over `BINS` distances, its
    expectation taken by a fixed 1×1 convolution (DFL), then dist2bbox's adds and subtracts
    between activations — ops NNCF would quantize unless they are kept in float."""

    BINS = 8

    def __init__(self, num_classes: int, size: int) -> None:
        super().__init__(4 * self.BINS + num_classes, size)
        self.dfl = nn.Conv2d(self.BINS, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(self.BINS, dtype=torch.float32).view(1, self.BINS, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        raw = self.raw(x)
        b, _, n = raw.shape
        box, cls = raw[:, : 4 * self.BINS], raw[:, 4 * self.BINS :]
        distances = self.dfl(box.view(b, 4, self.BINS, n).transpose(2, 1).softmax(1)).view(b, 4, n)
        lt, rb = distances[:, :2], distances[:, 2:]
        anchors = self.centres / self.strides
        x1y1, x2y2 = anchors - lt, anchors + rb
        xywh = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * self.strides
        return torch.cat([xywh, cls.sigmoid()], 1)


class Yolov5Like(_TwoLevel):
    """[B, 3, S, S] in 0–1 → [B, N, 5 + nc]: cx, cy, w, h, objectness, class scores."""

    def __init__(self, num_classes: int, size: int) -> None:
        super().__init__(5 + num_classes, size)

    def forward(self, x: Tensor) -> Tensor:
        raw = self.raw(x)
        return torch.cat([self.boxes(raw), raw[:, 4:].sigmoid()], 1).permute(0, 2, 1)


class End2EndLike(_TwoLevel):
    """[B, 3, S, S] → [B, K, 6]: x1, y1, x2, y2, score, class of the K best cells (no NMS)."""

    def __init__(self, num_classes: int, size: int, keep: int = 50) -> None:
        super().__init__(4 + num_classes, size)
        self.keep = keep

    def forward(self, x: Tensor) -> Tensor:
        raw = self.raw(x)
        cxcywh = self.boxes(raw)
        xyxy = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
        scores, labels = raw[:, 4:].sigmoid().max(1)
        top, index = scores.topk(self.keep, dim=1)
        boxes = torch.gather(xyxy, 2, index[:, None].expand(-1, 4, -1))
        return torch.cat([boxes.permute(0, 2, 1), top[..., None], torch.gather(labels, 1, index)[..., None].float()], 2)


def export_onnx(model: nn.Module, size: int, path: Path) -> Path:
    """The model as ONNX with a [1, 3, S, S] input named `images`, as YOLO exporters write it."""
    with torch.no_grad():
        torch.onnx.export(
            model.eval(), (torch.zeros(1, 3, size, size),), str(path), dynamo=False, input_names=["images"]
        )
    return path


def export_xml(model: nn.Module, size: int, path: Path, static: bool = True) -> Path:
    """The model as OpenVINO IR (`path` .xml + .bin), its input [1, 3, S, S] or, unless `static`,
    left dynamic by the converter (as a careless export would)."""
    import openvino as ov

    shape = {"input": [(1, 3, size, size)]} if static else {}
    with torch.no_grad():
        converted = ov.convert_model(model.eval(), example_input=torch.zeros(1, 3, size, size), **shape)
    ov.save_model(converted, str(path))
    return path
