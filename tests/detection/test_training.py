"""The training loop on a few real synthetic frames: flips move boxes with pixels, steps run, loss is finite."""

import math

import numpy as np
import pytest
import torch

from tasks.config import DetectorConfig, SyntheticConfig
from tasks.detection.families import build_detector
from tasks.detection.preprocess import Preprocessing
from tasks.detection.training import TrainSettings, _flip_batch, load_split, train
from tasks.synth.write import write_labelled_split

pytestmark = pytest.mark.unit


def test_flips_move_boxes_with_the_pixels():
    # given one bright 4×2 block at x 10–14, y 20–22 on a 32-px image, whatever the flips, the box covers it
    image = torch.zeros(1, 3, 32, 32)
    image[:, :, 20:22, 10:14] = 1.0
    box = torch.tensor([[10.0, 20.0, 14.0, 22.0]])
    rng = np.random.default_rng(0)
    for _ in range(8):
        (flipped,), (moved,) = _flip_batch(image, [box], rng)
        ys, xs = torch.nonzero(flipped[0]).T
        expected = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        assert moved[0].tolist() == expected, f"box {moved[0].tolist()} does not cover pixels {expected}"


def test_a_few_steps_run_and_loss_is_finite(tmp_path):
    write_labelled_split(SyntheticConfig(seed=11), "train", tmp_path, 6)
    split = load_split(tmp_path, Preprocessing(192))
    assert split.images.shape == (6, 192, 192, 3), "frames decoded into memory"
    model = build_detector(DetectorConfig(), load_checkpoint=False)
    result = train(model, split, TrainSettings(budget_s=1.5, batch_size=2, warmup_steps=1))
    assert result.steps >= 1 and math.isfinite(result.final_loss), f"{result}"
    assert not model.training, "train() hands the model back in eval mode"
