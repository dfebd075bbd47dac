"""Train the demo detector on the synthetic train split on the CPU, then score it on the eval split.

    tailcal train-detector --minutes 30 --out models/demo_detector.pt

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
    out: Path = Path("models/demo_detector.pt"),
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
    """Train the compact FCOS within a wall-clock budget, save the checkpoint, evaluate it in PyTorch.

    A checkpoint is saved every 5 minutes while training, so a crash loses little. The
    report (training figures and eval mAP) is written beside the checkpoint as JSON.

    Args:
        minutes: Wall-clock training budget.
        out: Checkpoint to write.
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
    from tasks.config import DetectorConfig
    from tasks.detection.model import build_detector, save_checkpoint
    from tasks.detection.preprocess import Preprocessing
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
    train_split = _ensure_split("train", train_dir, train_images, seed, workers)
    eval_split = _ensure_split("eval", eval_dir, eval_images, seed, workers)
    config = DetectorConfig(checkpoint=str(out))
    model = build_detector(config, load_checkpoint=False)
    preprocessing = Preprocessing(config.input_size, config.resize)
    split = load_split(train_split, preprocessing, num_classes=config.num_classes)
    # Scored with the labels it is trained on; refused now, not after the training budget is spent.
    scored_on = load_eval_split(eval_split, num_classes=config.num_classes, label_map=split.category_ids)
    settings = TrainSettings(budget_s=minutes * 60, batch_size=batch_size, lr=lr, seed=seed, threads=threads)
    logger.info("training on %d images for %.0f min", len(split.boxes), minutes)

    def checkpoint(m, step):
        save_checkpoint(m, out, {"step": step, "partial": True, "category_ids": list(split.category_ids)})

    result = train(model, split, settings, on_checkpoint=checkpoint)
    metadata = {"steps": result.steps, "wall_s": result.wall_s, "settings": vars(settings)}
    save_checkpoint(model, out, metadata | {"category_ids": list(split.category_ids)})
    # After training: a crash from here on must not lose the weights.
    from tasks.evaluation.evaluate import evaluate_torch

    evaluation = evaluate_torch(build_detector(config), scored_on, preprocessing)
    report = {"train": vars(result), "settings": vars(settings), "eval": evaluation.as_dict()}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["train-detector", *sys.argv[1:]]))
