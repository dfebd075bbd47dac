"""Train a detector on the synthetic train split on the CPU, then score it on the eval split.

    tailcal train-detector --minutes 30 --out models/demo_detector.pt
    tailcal train-detector --architecture retinanet_resnet50_fpn --input-size 256 --minutes 60

Generates data/detector-train (8,000 frames) and data/detector-eval (500) when absent.
torch is imported inside the function: `prefect deploy` imports every flow module.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tasks.errors import ConfigError

logger = logging.getLogger(__name__)


def _ensure_split(split: str, out_dir: Path, n: int, seed: int, workers: int) -> Path:
    """Generate a labelled synthetic split unless its annotations are already there."""
    from tasks.config import SyntheticConfig
    from tasks.synth.write import write_labelled_split

    if not (out_dir / "annotations.json").exists():
        write_labelled_split(SyntheticConfig(seed=seed, image_size=192), split, out_dir, n, workers=workers)
    return out_dir


def train_detector(
    minutes: float = 30.0,
    architecture: str = "fcos_compact",
    input_size: int | None = None,
    out: Path | None = None,
    train_dir: Path = Path("data/detector-train"),
    eval_dir: Path = Path("data/detector-eval"),
    train_images: int = 8000,
    eval_images: int = 500,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    workers: int = 2,
    threads: int = 1,
) -> dict:
    """Train a torchvision detector from scratch within a wall-clock budget, save the checkpoint,
    evaluate it in PyTorch.

    A checkpoint is saved every 5 minutes while training, so a crash loses little. The
    report (training figures and eval mAP) is written beside the checkpoint as JSON. Use the
    checkpoint with `detector.architecture` and `detector.checkpoint` (and `detector.input_size`
    when you set one here).

    Args:
        minutes: Wall-clock training budget.
        architecture: Detector family (detector.architecture): fcos_compact, the demo's own, or a
            torchvision family such as retinanet_resnet50_fpn or fasterrcnn_mobilenet_v3_large_fpn.
        input_size: Square input side in pixels; unset: the family's standard size.
        out: Checkpoint to write; unset: models/demo_detector.pt for fcos_compact, else the
            family's name under models/, e.g. models/retinanet_resnet50_fpn.pt.
        train_dir: Labelled COCO train split (generated when absent).
        eval_dir: Labelled COCO eval split (generated when absent).
        train_images: Frames to generate for a missing train split.
        eval_images: Frames to generate for a missing eval split.
        batch_size: Images per step.
        lr: Peak learning rate (AdamW, warm-up then cosine over the budget).
        seed: Seed of the generated splits and of training.
        workers: Processes generating the splits.
        threads: torch threads; 1 beats 2 when neighbours share the cores.
    """
    from pydantic import ValidationError

    from tasks.config import DetectorConfig
    from tasks.detection.families import adapter_for, build_detector, family_of, input_size_of, preprocessing_for
    from tasks.detection.model import save_checkpoint
    from tasks.detection.training import TrainSettings, load_split, train
    from tasks.evaluation.split import load_eval_split

    positive = {"minutes": minutes, "lr": lr}
    at_least_one = {"train_images": train_images, "eval_images": eval_images, "batch_size": batch_size}
    at_least_one |= {"workers": workers, "threads": threads}
    refused = [f"--{k.replace('_', '-')} {v}" for k, v in positive.items() if not v > 0]
    refused += [f"--{k.replace('_', '-')} {v}" for k, v in at_least_one.items() if v < 1]
    if refused or seed < 0:
        raise ConfigError(
            f"train-detector: {', '.join(refused + ([f'--seed {seed}'] if seed < 0 else []))} refused: minutes "
            "and lr must be > 0, counts ≥ 1, the seed ≥ 0 (nothing was trained or written)"
        )
    family = family_of(architecture)  # refused before any data is generated
    if out is None:
        out = Path("models/demo_detector.pt" if architecture == "fcos_compact" else f"models/{architecture}.pt")
    try:
        config = DetectorConfig(architecture=architecture, input_size=input_size, checkpoint=str(out))
    except ValidationError as exc:
        raise ConfigError(f"train-detector: --input-size {input_size} refused: {exc.errors()[0]['msg']}") from None
    size = input_size_of(config)
    train_split = _ensure_split("train", train_dir, train_images, seed, workers)
    eval_split = _ensure_split("eval", eval_dir, eval_images, seed, workers)
    model = build_detector(config, load_checkpoint=False)
    preprocessing = preprocessing_for(model, size, config.resize)
    split = load_split(train_split, preprocessing, num_classes=config.num_classes)
    # Scored with the labels it is trained on; refused now, not after the training budget is spent.
    scored_on = load_eval_split(eval_split, num_classes=config.num_classes, label_map=split.category_ids)
    settings = TrainSettings(budget_s=minutes * 60, batch_size=batch_size, lr=lr, seed=seed, threads=threads)
    logger.info("training on %d images for %.0f min", len(split.boxes), minutes)

    def checkpoint(m, step):
        save_checkpoint(m, out, {"step": step, "partial": True, "category_ids": list(split.category_ids)})

    result = train(model, split, settings, on_checkpoint=checkpoint, label_offset=int(family.background))
    metadata = {"steps": result.steps, "wall_s": result.wall_s, "settings": vars(settings)}
    save_checkpoint(model, out, metadata | {"category_ids": list(split.category_ids)})
    # After training: a crash from here on must not lose the weights.
    from tasks.evaluation.evaluate import evaluate_torch

    trained = build_detector(config)
    evaluation = evaluate_torch(trained, scored_on, adapter_for(trained, config, size))
    report = {
        "architecture": architecture,
        "input_size": size,
        "train": vars(result),
        "settings": vars(settings),
        "eval": evaluation.as_dict(),
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["train-detector", *sys.argv[1:]], error_at_exit=True))
