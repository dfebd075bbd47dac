"""The detector: a compact plain-conv FCOS built from config, and its checkpoint.

Plain 3×3 conv + BatchNorm + ReLU stages (no depthwise convs) because on an AVX2 CPU
without VNNI those are what INT8 speeds up; BatchNorm folds into the convs at export.
Full torchvision detection models do not trace for OpenVINO (list inputs, dict outputs),
so the IR holds only backbone + head (`RawHeadModel`, exported by `tasks.detection.export`)
and box decoding + NMS live in `tasks.detection.postprocess`, shared by the PyTorch, FP16
and INT8 paths.
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

from tasks.config import DetectorConfig
from tasks.detection.preprocess import IMAGE_MEAN, IMAGE_STD
from tasks.errors import TailcalError


class DetectorError(TailcalError):
    """The detector cannot be built, loaded or exported as configured."""


ARCHITECTURES = ("fcos_compact",)
STRIDES = (8, 16, 32)
# FCOS assigns a location to level l when max(l,t,r,b) lies in [4·size, 8·size]; with
# sizes (4, 8, 16) the 10–70 px defects spread over P3/P4 instead of all landing on P3.
ANCHOR_SIZES = (4, 8, 16)
# Measured in "anchor sizes": 3 × 4 px = 1.5 strides at P3, the FCOS paper's radius.
CENTER_SAMPLING_RADIUS = 3.0
FPN_CHANNELS = 64
HEAD_CONVS = 2
# The IR's outputs, in RawHeadModel's order.
OUTPUT_NAMES = ("cls_logits", "bbox_regression", "bbox_ctrness")


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


def build_detector(config: DetectorConfig, load_checkpoint: bool = True) -> FCOS:
    """The torchvision FCOS named by `config.architecture`, with the checkpoint's weights if asked."""
    if config.architecture not in ARCHITECTURES:
        raise DetectorError(
            f"detector.architecture {config.architecture!r} is not known: use one of {', '.join(ARCHITECTURES)}"
        )
    backbone = PlainConvBackbone()
    anchors = AnchorGenerator(tuple((s,) for s in ANCHOR_SIZES), ((1.0,),) * len(ANCHOR_SIZES))
    head = FCOSHead(FPN_CHANNELS, 1, config.num_classes, num_convs=HEAD_CONVS)
    # min_size = max_size = input size: torchvision would otherwise upscale to 800 px.
    model = FCOS(
        backbone,
        num_classes=config.num_classes,
        min_size=config.input_size,
        max_size=config.input_size,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        anchor_generator=anchors,
        head=head,
        center_sampling_radius=CENTER_SAMPLING_RADIUS,
        score_thresh=0.05,
        nms_thresh=0.6,
        detections_per_img=100,
    )
    if load_checkpoint:
        path = Path(config.checkpoint)
        if not path.exists():
            raise DetectorError(
                f"checkpoint {path} does not exist: train one with `tailcal train-detector` "
                "or set detector.checkpoint to your own"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises pickle, zip and runtime errors for a file that is not a checkpoint
            raise DetectorError(
                f"checkpoint {path} is not a PyTorch state_dict torch.load can read with weights_only=True "
                f"({type(exc).__name__}): point detector.checkpoint at a .pt file of weights"
            ) from None
        if not isinstance(state, dict):
            raise DetectorError(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict")
        try:
            model.load_state_dict(state.get("model", state))
        except RuntimeError as exc:
            raise DetectorError(f"checkpoint {path} does not fit {config.architecture}: {exc}") from None
    return model.eval()


def save_checkpoint(model: FCOS, path: Path, metadata: dict | None = None) -> Path:
    """Weights in half precision (BatchNorm stats stay fp32) so the shipped file stays small."""
    state = {
        k: (v.half() if v.is_floating_point() and "running_" not in k else v) for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "metadata": metadata or {}}, path)
    return path


class RawHeadModel(nn.Module):
    """Normalized images [N,3,H,W] → raw head tensors: the traceable part of FCOS."""

    def __init__(self, model: FCOS) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = list(self.backbone(x).values())
        out = self.head(features)
        return out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]
