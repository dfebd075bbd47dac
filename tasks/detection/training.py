"""Train a torchvision detector (any family in `tasks.detection.families`) on a labelled COCO split,
on the CPU, within a wall-clock budget.

The learning-rate schedule runs on the fraction of the time budget used, not on a step
count: the CPU is shared, steps per minute vary several-fold between runs, and a
step-based cosine would either stop early or never anneal.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks.detection.labels import resolve_category_ids, split_categories
from tasks.detection.preprocess import Preprocessing
from tasks.imaging import decode_rgb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledSplit:
    """A COCO split held in memory: uint8 images [N, H, W, 3], xyxy boxes and 0-based labels per image.

    Label i is COCO category `category_ids[i]` (`tasks.detection.labels`): evaluate the
    trained model with the same mapping.
    """

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    image_ids: list[int]
    conditions: list[str]
    category_ids: tuple[int, ...]


@dataclass(frozen=True)
class TrainSettings:
    """The recipe; the defaults are what shipped models/demo_detector.pt (see models/RECIPE.md)."""

    budget_s: float = 30 * 60
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    # One thread: on a shared 2-core box two OpenMP threads measured ~5× slower per step
    # (each waits for the other to be scheduled) than one.
    threads: int = 1
    seed: int = 0
    log_every: int = 25


@dataclass(frozen=True)
class TrainResult:
    """What training did."""

    steps: int
    images_seen: int
    wall_s: float
    final_loss: float


def load_split(
    coco_dir: Path,
    preprocessing: Preprocessing,
    limit: int | None = None,
    *,
    num_classes: int | None = None,
    label_map: Sequence[int] | None = None,
) -> LabelledSplit:
    """Read `annotations.json` + `images/` into memory, each image fit to the detector's input
    and its boxes moved with it (8,000 192-px frames ≈ 0.9 GB).

    An annotation of category c gets label `category_ids.index(c)`, the mapping evaluation
    uses: `label_map` when given, else the split's category ids sorted ascending. With the
    detector's `num_classes`, a split with another number of categories is refused
    (CategoryMapError naming the file and the ids found).
    """
    annotations = coco_dir / "annotations.json"
    coco = json.loads(annotations.read_text())
    category_ids = resolve_category_ids(
        list(split_categories(coco, annotations)),
        annotations,
        num_classes=num_classes,
        label_map=label_map,
        setting="label_map",
        annotated={a.get("category_id") for a in coco["annotations"]},
    )
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    records = coco["images"][:limit] if limit else coco["images"]
    by_image: dict[int, list[dict]] = {r["id"]: [] for r in records}
    for ann in coco["annotations"]:
        if ann["image_id"] in by_image:
            by_image[ann["image_id"]].append(ann)
    images, boxes, labels = [], [], []
    for record in records:
        image, placement = preprocessing.fit(decode_rgb((coco_dir / "images" / record["file_name"]).read_bytes()))
        images.append(image)
        anns = by_image[record["id"]]
        xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes.append(placement.to_input(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)))
        labels.append(np.asarray([label_of[a["category_id"]] for a in anns], np.int64))
    return LabelledSplit(
        images=np.stack(images),
        boxes=boxes,
        labels=labels,
        image_ids=[r["id"] for r in records],
        conditions=[r.get("condition", "unknown") for r in records],
        category_ids=category_ids,
    )


def _flip_batch(images: torch.Tensor, boxes: list[torch.Tensor], rng: np.random.Generator):
    # Defects have no preferred orientation; flips keep motion blur horizontal, as the line pans.
    side_h, side_w = images.shape[-2:]
    out_images, out_boxes = [], []
    for image, box in zip(images, boxes, strict=True):
        if rng.random() < 0.5:
            image = image.flip(-1)
            box = torch.stack([side_w - box[:, 2], box[:, 1], side_w - box[:, 0], box[:, 3]], dim=1)
        if rng.random() < 0.5:
            image = image.flip(-2)
            box = torch.stack([box[:, 0], side_h - box[:, 3], box[:, 2], side_h - box[:, 1]], dim=1)
        out_images.append(image)
        out_boxes.append(box)
    return out_images, out_boxes


def train(
    model: nn.Module,
    split: LabelledSplit,
    settings: TrainSettings = TrainSettings(),
    on_checkpoint: Callable[[nn.Module, int], None] | None = None,
    checkpoint_every_s: float = 300.0,
    label_offset: int = 0,
) -> TrainResult:
    """AdamW with linear warm-up then cosine decay over the time budget; random h/v flips.

    `model` is a torchvision detector in its own training mode (`model(images, targets)` →
    losses). `label_offset` is 1 for the families whose logit 0 is background (SSD, Faster
    R-CNN): split label i trains logit i + 1."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    images_u8 = torch.from_numpy(split.images).permute(0, 3, 1, 2)
    boxes = [torch.from_numpy(b) for b in split.boxes]
    labels = [torch.from_numpy(lab) + label_offset for lab in split.labels]
    started = time.perf_counter()
    last_checkpoint = started
    step, loss_value, order = 0, float("nan"), np.empty(0, np.int64)
    while (elapsed := time.perf_counter() - started) < settings.budget_s:
        if len(order) < settings.batch_size:
            order = np.concatenate([order, rng.permutation(len(boxes))])
        idx, order = order[: settings.batch_size], order[settings.batch_size :]
        batch = images_u8[idx].float().div_(255.0)
        batch_images, batch_boxes = _flip_batch(batch, [boxes[i] for i in idx], rng)
        targets = [{"boxes": b, "labels": labels[i]} for b, i in zip(batch_boxes, idx, strict=True)]
        lr = _lr_at(step, elapsed / settings.budget_s, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = model(batch_images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        if step == 1 or step % settings.log_every == 0:  # the first step says training has begun
            parts = " ".join(f"{k}={float(v):.3f}" for k, v in losses.items())
            logger.info(
                "step %d  %.0f of %.0f s  lr %.2e  loss %.3f (%s)",
                step,
                elapsed,
                settings.budget_s,
                lr,
                loss_value,
                parts,
            )
        if on_checkpoint and time.perf_counter() - last_checkpoint > checkpoint_every_s:
            on_checkpoint(model, step)
            last_checkpoint = time.perf_counter()
    model.eval()
    wall = time.perf_counter() - started
    return TrainResult(steps=step, images_seen=step * settings.batch_size, wall_s=wall, final_loss=loss_value)


def _lr_at(step: int, progress: float, settings: TrainSettings) -> float:
    warm = min(1.0, (step + 1) / settings.warmup_steps)
    return settings.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
