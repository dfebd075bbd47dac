"""Train the demo detector on the synthetic train split on the CPU, then score it on the eval split.

    python -m flows.train_detector --minutes 30 --out models/demo_detector.pt

Generates data/detector-train (8,000 frames) and data/detector-eval (500) when absent.
torch is imported inside functions: `prefect deploy` imports every entrypoint.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

DEFAULT_TRAIN_DIR = Path("data/detector-train")
DEFAULT_EVAL_DIR = Path("data/detector-eval")


def ensure_split(split: str, out_dir: Path, n: int, seed: int, workers: int) -> Path:
    """Generate a labelled synthetic split unless its annotations are already there."""
    from tasks.config import SyntheticConfig
    from tasks.synth.write import write_labelled_split

    if not (out_dir / "annotations.json").exists():
        write_labelled_split(SyntheticConfig(seed=seed, image_size=192), split, out_dir, n, workers=workers)
    return out_dir


def train_and_evaluate(args: argparse.Namespace) -> dict:
    """Train within the time budget, save the checkpoint, evaluate it in PyTorch."""
    from tasks.config import DetectorConfig
    from tasks.detection.training import TrainSettings, load_split, train
    from tasks.detector import build_detector, save_checkpoint

    train_dir = ensure_split("train", args.train_dir, args.train_images, args.seed, args.workers)
    eval_dir = ensure_split("eval", args.eval_dir, args.eval_images, args.seed, args.workers)
    config = DetectorConfig(checkpoint=str(args.out))
    model = build_detector(config, load_checkpoint=False)
    split = load_split(train_dir)
    settings = TrainSettings(
        budget_s=args.minutes * 60, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads
    )
    logging.getLogger(__name__).info("training on %d images for %.0f min", len(split.boxes), args.minutes)

    def checkpoint(m, step):
        save_checkpoint(m, args.out, {"step": step, "partial": True})

    result = train(model, split, settings, on_checkpoint=checkpoint)
    save_checkpoint(model, args.out, {"steps": result.steps, "wall_s": result.wall_s, "settings": vars(settings)})
    from tasks.evaluate import evaluate_torch  # after training: a crash here must not lose the weights

    evaluation = evaluate_torch(build_detector(config), eval_dir)
    report = {"train": vars(result), "settings": vars(settings), "eval": evaluation.as_dict()}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget")
    parser.add_argument("--out", type=Path, default=Path("models/demo_detector.pt"))
    parser.add_argument("--train-dir", type=Path, default=DEFAULT_TRAIN_DIR)
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    parser.add_argument("--train-images", type=int, default=8000)
    parser.add_argument("--eval-images", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 1 beats 2 when neighbours share the cores"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = train_and_evaluate(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
