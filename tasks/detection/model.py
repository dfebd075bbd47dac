"""The demo's own detector: a compact plain-conv FCOS (family `fcos_compact`), and checkpoints.

Plain 3×3 conv + BatchNorm + ReLU stages (no depthwise convs) because on an AVX2 CPU
without VNNI those are what INT8 speeds up; BatchNorm folds into the convs at export.
It is a torchvision `FCOS` with a custom backbone, so it exports and decodes like every
other family (`tasks.detection.families`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork

from tasks.detection.preprocess import IMAGE_MEAN, IMAGE_STD

STRIDES = (8, 16, 32)
# FCOS assigns a location to level l when max(l,t,r,b) lies in [4·size, 8·size]; with
# sizes (4, 8, 16) the 10–70 px defects spread over P3/P4 instead of all landing on P3.
ANCHOR_SIZES = (4, 8, 16)
# Measured in "anchor sizes": 3 × 4 px = 1.5 strides at P3, the FCOS paper's radius.
CENTER_SAMPLING_RADIUS = 3.0
FPN_CHANNELS = 64
HEAD_CONVS = 2


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PlainConvBackbone(nn.Module):
    """VGG-style stages at strides 8/16/32 plus an FPN, returning P3–P5 (`out_channels` each)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96, 128), out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        w = widths
        self.stem = nn.Sequential(_conv_bn_relu(3, w[0], 2), _conv_bn_relu(w[0], w[1], 2), _conv_bn_relu(w[1], w[1]))
        self.c3 = nn.Sequential(_conv_bn_relu(w[1], w[2], 2), _conv_bn_relu(w[2], w[2]))
        self.c4 = nn.Sequential(_conv_bn_relu(w[2], w[3], 2), _conv_bn_relu(w[3], w[3]))
        self.c5 = nn.Sequential(_conv_bn_relu(w[3], w[4], 2), _conv_bn_relu(w[4], w[4]))
        self.fpn = FeaturePyramidNetwork([w[2], w[3], w[4]], out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        return self.fpn(OrderedDict([("p3", c3), ("p4", c4), ("p5", c5)]))


def build_compact_fcos(num_classes: int, input_size: int) -> FCOS:
    """The compact FCOS with random weights, its transform fixed to `input_size` (torchvision would
    otherwise upscale to 800 px). `tasks.detection.families` builds it as family `fcos_compact`."""
    backbone = PlainConvBackbone()
    anchors = AnchorGenerator(tuple((s,) for s in ANCHOR_SIZES), ((1.0,),) * len(ANCHOR_SIZES))
    head = FCOSHead(FPN_CHANNELS, 1, num_classes, num_convs=HEAD_CONVS)
    return FCOS(
        backbone,
        num_classes=num_classes,
        min_size=input_size,
        max_size=input_size,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        anchor_generator=anchors,
        head=head,
        center_sampling_radius=CENTER_SAMPLING_RADIUS,
        score_thresh=0.05,
        nms_thresh=0.6,
        detections_per_img=100,
    )


def save_checkpoint(model: nn.Module, path: Path, metadata: dict | None = None) -> Path:
    """Weights in half precision (BatchNorm stats stay fp32) so the shipped file stays small."""
    state = {
        k: (v.half() if v.is_floating_point() and "running_" not in k else v) for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "metadata": metadata or {}}, path)
    return path
