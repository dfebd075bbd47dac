"""Torchvision detector families: build one from config, the part of it the IR holds, and its decoder.

Whole torchvision detectors do not trace for OpenVINO (list inputs, dict outputs;
`torch.export` fails on all of them, pytorch#118884). The IR therefore holds the traceable
part at a fixed square input — backbone + head for the single-stage families — and the
decoder rebuilds the same family with `weights=None` (never a download) and runs
torchvision's own anchor generator and `postprocess_detections` on the IR's outputs: the
decoding is torchvision's, not a re-implementation.

Two-stage (Faster R-CNN) families: the IR, and so what INT8 quantizes, holds backbone + FPN +
the RPN head's convs. Proposal selection (anchors, box decoding, NMS) and the RoI heads
(RoIAlign, box head, predictor) stay in PyTorch in float, with the RoI heads' weights read
from the checkpoint the IR was exported from. The RoI heads run on every proposal (1,000 per
image at test time), so that PyTorch part is much of the latency, and INT8 speeds the detector
up end to end far less than the IR alone: `bench/ptq.py` measured it, at 800 px on 2 shared
cores, at 58 % of the batch-1 latency with the FP16 IR and 93 % with INT8 for
fasterrcnn_resnet50_fpn_v2 (end to end 1.70× faster in INT8), and 88 % and 95 % for
fasterrcnn_mobilenet_v3_large_fpn (1.23×).

`detector.num_classes` counts object classes only. SSD and Faster R-CNN reserve logit 0 for
background (torchvision's convention), so they are built with num_classes + 1 and their
labels come out shifted back to 0 … num_classes − 1; RetinaNet and FCOS have no background
logit.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models import detection as tvd
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD

from tasks.config import DetectorConfig
from tasks.detection.adapter import Adapter, DetectorError
from tasks.detection.postprocess import Detections
from tasks.detection.preprocess import Preprocessing


@dataclass(frozen=True)
class Family:
    """A detector family tailcal can build, export and decode."""

    name: str
    build: Callable[..., nn.Module]  # torchvision's builder (weights=None, weights_backbone=None, num_classes, …)
    standard_size: int  # square input side the family is used at
    background: bool  # logit 0 is background (num_classes + 1 logits)
    fixed_size: bool  # the anchor generator fixes the input size (SSD)
    two_stage: bool = False


def _compact(**kwargs) -> nn.Module:
    from tasks.detection.model import build_compact_fcos

    return build_compact_fcos(kwargs["num_classes"], kwargs["min_size"])


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("fcos_compact", _compact, 192, background=False, fixed_size=False),
        Family("ssd300_vgg16", tvd.ssd300_vgg16, 300, background=True, fixed_size=True),
        Family(
            "ssdlite320_mobilenet_v3_large", tvd.ssdlite320_mobilenet_v3_large, 320, background=True, fixed_size=True
        ),
        Family("retinanet_resnet50_fpn", tvd.retinanet_resnet50_fpn, 800, background=False, fixed_size=False),
        Family("retinanet_resnet50_fpn_v2", tvd.retinanet_resnet50_fpn_v2, 800, background=False, fixed_size=False),
        Family("fcos_resnet50_fpn", tvd.fcos_resnet50_fpn, 800, background=False, fixed_size=False),
        Family(
            "fasterrcnn_mobilenet_v3_large_fpn",
            tvd.fasterrcnn_mobilenet_v3_large_fpn,
            800,
            background=True,
            fixed_size=False,
            two_stage=True,
        ),
        Family(
            "fasterrcnn_resnet50_fpn_v2",
            tvd.fasterrcnn_resnet50_fpn_v2,
            800,
            background=True,
            fixed_size=False,
            two_stage=True,
        ),
    )
}
# FPN families pad a batch to a multiple of 32 (GeneralizedRCNNTransform.size_divisible).
SIZE_DIVISOR = 32


def family_of(name: str) -> Family:
    """The family called `name`; DetectorError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise DetectorError(f"detector.architecture {name!r} is not known: use one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def input_size_of(config: DetectorConfig) -> int:
    """The square input side for `config`: `detector.input_size`, or the family's standard size.

    Refuses a size the family cannot take as it would in PyTorch: SSD's anchors fix its size,
    and the FPN families pad to a multiple of 32, so another size would not be the model the
    user trained."""
    family = family_of(config.architecture)
    size = config.input_size or family.standard_size
    if family.fixed_size and size != family.standard_size:
        raise DetectorError(
            f"detector.input_size {size} does not fit {family.name}: its anchors are built for "
            f"{family.standard_size} px; set detector.input_size to {family.standard_size} or leave it unset"
        )
    if not family.fixed_size and size % SIZE_DIVISOR:
        raise DetectorError(
            f"detector.input_size {size} is not a multiple of {SIZE_DIVISOR}: torchvision pads {family.name}'s "
            f"input to one, so use {size // SIZE_DIVISOR * SIZE_DIVISOR or SIZE_DIVISOR} or "
            f"{(size // SIZE_DIVISOR + 1) * SIZE_DIVISOR}"
        )
    return size


def build_model(family_name: str, num_classes: int, input_size: int) -> nn.Module:
    """The family with random weights (`weights=None, weights_backbone=None`: never a download),
    in eval mode, its transform fixed to `input_size` so torchvision does not resize again."""
    family = family_of(family_name)
    kwargs: dict = {"num_classes": num_classes + int(family.background)}
    if family.name != "fcos_compact":
        kwargs |= {"weights": None, "weights_backbone": None}
    if not family.fixed_size:
        kwargs |= {"min_size": input_size, "max_size": input_size}
    return family.build(**kwargs).eval()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The state_dict in a checkpoint file: a plain state_dict, or a dict holding one under `model`
    (torchvision's reference scripts) or `state_dict` (PyTorch Lightning and others)."""
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
    if isinstance(state, dict):
        state = next((state[key] for key in ("model", "state_dict") if isinstance(state.get(key), dict)), state)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DetectorError(
            f"checkpoint {path} holds a {type(state).__name__}, not a state_dict: save `model.state_dict()` "
            "(or {'model': model.state_dict()})"
        )
    return state


def checkpoint_state(path: Path, own: dict[str, Tensor]) -> dict[str, Tensor]:
    """The checkpoint's state_dict (`read_state_dict`) under the keys of `own`, the model's own
    state_dict: two differences that training recipes leave, and that change no weight, are undone.

    - One prefix on every key (`module.` from DataParallel/DDP, `model.` from a Lightning
      module): dropped when the model then has every key left.
    - No `num_batches_tracked` buffers: a model fine-tuned from pretrained weights has
      torchvision's FrozenBatchNorm2d (weight, bias, running mean and var only), which
      computes what BatchNorm2d computes in eval mode; the skeleton's own counters are kept.
    """
    state = read_state_dict(path)
    heads = {key.partition(".")[0] for key in state}
    if len(heads) == 1 and all("." in key for key in state) and not set(state) <= set(own):
        stripped = {key.partition(".")[2]: value for key, value in state.items()}
        if set(stripped) <= set(own):
            state = stripped
    counters = {k: v for k, v in own.items() if k.endswith(".num_batches_tracked") and k not in state}
    return state | counters


def build_detector(config: DetectorConfig, load_checkpoint: bool = True) -> nn.Module:
    """The torchvision model `config` names, in eval mode, with the checkpoint's weights if asked.

    Raises DetectorError for an unknown family, a missing or unreadable checkpoint, or one
    that does not fit (naming the missing and unexpected keys)."""
    model = build_model(config.architecture, config.num_classes, input_size_of(config))
    if load_checkpoint:
        path = Path(config.checkpoint)
        own = model.state_dict()
        state = checkpoint_state(path, own)
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:

            def listed(keys: list[str]) -> str:
                return ", ".join(keys[:5]) + (f" … ({len(keys)} in all)" if len(keys) > 5 else "")

            parts = [f"missing keys: {listed(missing)}"] if missing else []
            parts += [f"unexpected keys: {listed(unexpected)}"] if unexpected else []
            shapes = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
            parts += [f"shape mismatch (checkpoint vs model): {shapes}"] if wrong else []
            raise DetectorError(
                f"checkpoint {path} does not fit {config.architecture} with detector.num_classes "
                f"{config.num_classes}: {'; '.join(parts)}. Check detector.architecture and detector.num_classes "
                "(object classes, without background)"
            )
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model.eval()


def preprocessing_for(model: nn.Module, input_size: int, resize: str) -> Preprocessing:
    """The model's own normalisation (its GeneralizedRCNNTransform's mean/std) at `input_size`."""
    transform = model.transform
    return Preprocessing(input_size, resize, tuple(transform.image_mean), tuple(transform.image_std))  # type: ignore[arg-type]


def _features(backbone: nn.Module, x: Tensor) -> list[Tensor]:
    features = backbone(x)
    return [features] if isinstance(features, Tensor) else list(features.values())


class SingleStageHead(nn.Module):
    """Normalised [N, 3, S, S] → the head's tensors (sorted by name): the traceable part of
    RetinaNet, FCOS and SSD."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.head(_features(self.backbone, x))
        return tuple(out[k] for k in sorted(out))


class TwoStageTrunk(nn.Module):
    """Normalised [N, 3, S, S] → per FPN level the feature map, then per level the RPN objectness,
    then per level the RPN box deltas: backbone + FPN + RPN head convs of a Faster R-CNN."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.rpn_head = model.backbone, model.rpn.head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features = _features(self.backbone, x)
        objectness, deltas = self.rpn_head(features)
        return (*features, *objectness, *deltas)


def traceable(model: nn.Module) -> nn.Module:
    """The part of `model` that goes into the IR."""
    return TwoStageTrunk(model).eval() if isinstance(model, FasterRCNN) else SingleStageHead(model).eval()


def adapter_for(model: nn.Module, config: DetectorConfig, input_size: int) -> Adapter:
    """The adapter of a built model: its preprocessing and the decoder of its IR outputs."""
    family = family_of(config.architecture)
    with torch.no_grad():
        shapes = [tuple(f.shape[-2:]) for f in _features(model.backbone, torch.zeros(1, 3, input_size, input_size))]
    spec = {
        "family": family.name,
        "num_classes": config.num_classes,
        "input_size": input_size,
        "level_shapes": [list(s) for s in shapes],
    }
    if family.two_stage:
        path = Path(config.checkpoint).resolve()
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        decoder = TwoStageDecoder.from_spec(spec | {"checkpoint": str(path), "sha256": digest})
    else:
        decoder = TorchvisionDecoder.from_spec(spec)
    return Adapter(preprocessing_for(model, input_size, config.resize), decoder)


class TorchvisionDecoder:
    """Head tensors of RetinaNet, FCOS or SSD → detections, by torchvision's own anchor generator
    and `postprocess_detections` (with the family's own thresholds), on a `weights=None` skeleton."""

    kind = "torchvision"
    preset = "performance"

    def __init__(self, family: str, num_classes: int, input_size: int, level_shapes: Sequence[Sequence[int]]) -> None:
        self._spec = {
            "family": family,
            "num_classes": num_classes,
            "input_size": input_size,
            "level_shapes": [list(s) for s in level_shapes],
        }
        self.num_labels = num_classes
        self._background = int(FAMILIES[family].background)
        self._model = build_model(family, num_classes, input_size)
        self._size = input_size
        image = ImageList(torch.zeros(1, 3, input_size, input_size), [(input_size, input_size)])
        features = [torch.zeros(1, 1, h, w) for h, w in level_shapes]
        with torch.no_grad():
            self._anchors = self._model.anchor_generator(image, features)[0]
        self._cells = [h * w for h, w in level_shapes]
        self._keys = sorted(
            ("cls_logits", "bbox_regression") + (("bbox_ctrness",) if family.startswith("fcos") else ())
        )

    @classmethod
    def from_spec(cls, spec: dict) -> TorchvisionDecoder:
        return cls(spec["family"], spec["num_classes"], spec["input_size"], spec["level_shapes"])

    def spec(self) -> dict:
        return dict(self._spec)

    def ignored_scope(self, model) -> list[str]:
        return []  # the IR ends at the head's convolutions: nothing to keep in float

    def decode(self, outputs: Sequence[np.ndarray]) -> list[Detections]:
        if len(outputs) != len(self._keys):
            raise DetectorError(
                f"the IR gives {len(outputs)} outputs; a {self._spec['family']} head gives {len(self._keys)}"
            )
        head = {
            key: torch.from_numpy(np.asarray(out, np.float32)) for key, out in zip(self._keys, outputs, strict=True)
        }
        n = next(iter(head.values())).shape[0]
        sizes = [(self._size, self._size)] * n
        with torch.no_grad():
            if isinstance(self._model, SSD):
                found = self._model.postprocess_detections(head, [self._anchors] * n, sizes)
            else:
                # As RetinaNet/FCOS.forward do: split the concatenated levels, A anchors per cell.
                per_cell = head["cls_logits"].shape[1] // sum(self._cells)
                counts = [cells * per_cell for cells in self._cells]
                split = {key: list(value.split(counts, dim=1)) for key, value in head.items()}
                anchors = [list(self._anchors.split(counts))] * n
                found = self._model.postprocess_detections(split, anchors, sizes)
        return [_detections(d, self._background) for d in found]


def _detections(found: dict[str, Tensor], background: int) -> Detections:
    return Detections(
        found["boxes"].numpy().astype(np.float32),
        found["scores"].numpy().astype(np.float32),
        (found["labels"] - background).numpy().astype(np.int64),
    )


class TwoStageDecoder:
    """Backbone/FPN features and RPN head tensors of a Faster R-CNN → detections: torchvision's
    RPN proposal selection and RoI heads, in PyTorch and float, with the RoI heads' weights from
    the checkpoint the IR was exported from (checked by sha256)."""

    kind = "two_stage"
    preset = "performance"

    def __init__(
        self,
        family: str,
        num_classes: int,
        input_size: int,
        level_shapes: Sequence[Sequence[int]],
        checkpoint: str,
        sha256: str,
    ) -> None:
        self._spec = {
            "family": family,
            "num_classes": num_classes,
            "input_size": input_size,
            "level_shapes": [list(s) for s in level_shapes],
            "checkpoint": checkpoint,
            "sha256": sha256,
        }
        self.num_labels = num_classes
        path = Path(checkpoint)
        if not path.exists():
            raise DetectorError(
                f"the {family} IR decodes with the RoI heads of checkpoint {path}, which no longer exists: "
                "put it back or export the IR again from the checkpoint you have"
            )
        with path.open("rb") as handle:
            if hashlib.file_digest(handle, "sha256").hexdigest() != sha256:
                raise DetectorError(
                    f"checkpoint {path} changed since the {family} IR was exported from it: export the IR again"
                )
        self._model = build_model(family, num_classes, input_size)
        own = self._model.state_dict()
        state = checkpoint_state(path, own)
        self._model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        self._size = input_size
        self._levels = len(level_shapes)
        with torch.no_grad():
            self._feature_names = list(self._model.backbone(torch.zeros(1, 3, 64, 64)).keys())
        image = ImageList(torch.zeros(1, 3, input_size, input_size), [(input_size, input_size)])
        features = [torch.zeros(1, 1, h, w) for h, w in level_shapes]
        with torch.no_grad():
            self._anchors = self._model.rpn.anchor_generator(image, features)[0]

    @classmethod
    def from_spec(cls, spec: dict) -> TwoStageDecoder:
        return cls(**spec)

    def spec(self) -> dict:
        return dict(self._spec)

    def ignored_scope(self, model) -> list[str]:
        return []

    def decode(self, outputs: Sequence[np.ndarray]) -> list[Detections]:
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        levels = self._levels
        if len(outputs) != 3 * levels:
            raise DetectorError(
                f"the IR gives {len(outputs)} outputs; a {self._spec['family']} trunk gives {3 * levels}"
            )
        tensors = [torch.from_numpy(np.asarray(out, np.float32)) for out in outputs]
        features, objectness, deltas = tensors[:levels], tensors[levels : 2 * levels], tensors[2 * levels :]
        n = features[0].shape[0]
        sizes = [(self._size, self._size)] * n
        rpn = self._model.rpn
        with torch.no_grad():
            # As RegionProposalNetwork.forward does, from the head's outputs on.
            per_level = [o[0].numel() for o in objectness]
            flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
            proposals = rpn.box_coder.decode(flat_deltas.detach(), [self._anchors] * n).view(n, -1, 4)
            boxes, _ = rpn.filter_proposals(proposals, flat_objectness, sizes, per_level)
            named = OrderedDict(zip(self._feature_names, features, strict=True))
            found, _ = self._model.roi_heads(named, boxes, sizes)
        return [_detections(d, 1) for d in found]
