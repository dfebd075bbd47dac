"""Cheap input difficulty and image statistics, computed in the service (no VLM call).

The difficulty is the reference scorer's own formula (`assess_image`: exposure, contrast,
blur, noise, clutter), so the router sees difficulty on the scale the calibration set was
selected on. About 1 ms for a 192 px frame. The statistics are the raw quantities behind
it; the drift monitor compares their distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tasks.scoring.reference_scorer import assess_image

STAT_NAMES: tuple[str, ...] = ("brightness", "contrast", "sharpness", "noise", "saturated")


@dataclass(frozen=True)
class DifficultyEstimate:
    """Difficulty in [0, 1] and the factors (low_light, motion_blur, …) that drove it."""

    difficulty: float
    factors: tuple[str, ...]


def estimate_difficulty(image: np.ndarray) -> DifficultyEstimate:
    """uint8 RGB [H, W, 3] → difficulty on the reference scorer's scale."""
    assessment = assess_image(Image.fromarray(image))
    return DifficultyEstimate(assessment.difficulty, assessment.factors)


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Mean brightness, contrast (std), sharpness (mean gradient), noise sigma, saturated fraction."""
    gray = np.asarray(Image.fromarray(image).convert("L"), dtype=np.float32) / 255.0
    gradient = 0.5 * (np.abs(np.diff(gray, axis=1)).mean() + np.abs(np.diff(gray, axis=0)).mean())
    # Immerkær's noise estimate, as in the reference scorer: a 3×3 second-difference mask.
    mask = gray[:-2, :-2] - 2 * gray[:-2, 1:-1] + gray[:-2, 2:] - 2 * gray[1:-1, :-2] + 4 * gray[1:-1, 1:-1]
    mask = mask - 2 * gray[1:-1, 2:] + gray[2:, :-2] - 2 * gray[2:, 1:-1] + gray[2:, 2:]
    return {
        "brightness": float(gray.mean()),
        "contrast": float(gray.std()),
        "sharpness": float(gradient),
        "noise": float(np.sqrt(np.pi / 2) * np.abs(mask).mean() / 6),
        "saturated": float((gray > 0.97).mean()),
    }
