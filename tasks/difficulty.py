"""Image statistics and the difficulty formula computed from them: one module, three readers.

The reference scorer (`tasks.testing.reference_scorer`) answers with this difficulty, the
inference service routes on it, and the drift monitor compares the distributions of its
statistics, so all three see difficulty on one scale. It is a stand-in for a VLM's
judgement, not a VLM: it sees exposure, contrast, blur, noise and clutter, and misses
partial occlusion. About 1 ms for a 192 px frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# The statistics the drift monitor compares (the fields of ImageStatistics it reports).
STAT_NAMES: tuple[str, ...] = ("brightness", "contrast", "sharpness", "noise", "saturated")


@dataclass(frozen=True)
class ImageStatistics:
    """Grey-level statistics of one image, all from pixel values scaled to [0, 1].

    brightness: mean; contrast: standard deviation; sharpness: mean absolute gradient;
    noise: Immerkær's sigma estimate; saturated: share of pixels above 0.97;
    anisotropy: larger over smaller mean gradient of the two axes (motion blur smears one);
    edges: share of pixels whose 3×3 second difference exceeds 0.25 (clutter).
    """

    brightness: float
    contrast: float
    sharpness: float
    noise: float
    saturated: float
    anisotropy: float
    edges: float

    def as_dict(self) -> dict[str, float]:
        """The drift features (`STAT_NAMES`) by name."""
        return {name: getattr(self, name) for name in STAT_NAMES}


@dataclass(frozen=True)
class ImageAssessment:
    """Difficulty in [0, 1], the factors (low_light, motion_blur, …) that drove it, and the statistics."""

    difficulty: float
    factors: tuple[str, ...]
    statistics: ImageStatistics


def image_statistics(image: Image.Image | np.ndarray) -> ImageStatistics:
    """A PIL image or uint8 array ([H, W, 3] RGB or [H, W] grey) → its statistics."""
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    gray = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
    if min(gray.shape) < 3:
        # The 3×3 noise mask and the gradients need 3 pixels each way; a sliver is edge-padded
        # so its statistics are numbers (NaN would silently collapse drift's PSI bins).
        gray = np.pad(gray, [(0, max(0, 3 - side)) for side in gray.shape], mode="edge")
    gx, gy = np.abs(np.diff(gray, axis=1)).mean(), np.abs(np.diff(gray, axis=0)).mean()
    # Immerkær (1996), "Fast noise variance estimation": a 3×3 second-difference mask that
    # ignores smooth structure; sigma = sqrt(π/2) · mean|mask| / 6.
    mask = gray[:-2, :-2] - 2 * gray[:-2, 1:-1] + gray[:-2, 2:] - 2 * gray[1:-1, :-2] + 4 * gray[1:-1, 1:-1]
    mask = mask - 2 * gray[1:-1, 2:] + gray[2:, :-2] - 2 * gray[2:, 1:-1] + gray[2:, 2:]
    return ImageStatistics(
        brightness=float(gray.mean()),
        contrast=float(gray.std()),
        sharpness=float(0.5 * (gx + gy)),
        noise=float(np.sqrt(np.pi / 2) * np.abs(mask).mean() / 6),
        saturated=float((gray > 0.97).mean()),
        anisotropy=float(max(gx, gy) / max(min(gx, gy), 1e-4)),
        edges=float((np.abs(mask) > 0.25).mean()),
    )


def assess(image: Image.Image | np.ndarray) -> ImageAssessment:
    """Difficulty from the statistics: 0.12 + 0.68 · the strongest factor + 0.2 · their mean, clipped to [0, 1].

    Each factor maps one statistic to [0, 1]; thresholds were set from the synthetic
    benchmark's per-condition statistics. A factor above 0.3 is named.
    """
    stats = image_statistics(image)
    factors = {
        "low_light": np.clip((0.13 - stats.brightness) / 0.08, 0, 1),
        "overexposure": np.clip((stats.saturated - 0.05) / 0.3, 0, 1),
        "low_contrast": np.clip((0.055 - stats.contrast) / 0.035, 0, 1),
        # float32, the precision the gradients were taken in: the released scores used it.
        "motion_blur": 0.8 * np.clip((np.float32(stats.anisotropy) - 2.5) / 3.0, 0, 1),
        "sensor_noise": np.clip((stats.noise - 0.025) / 0.05, 0, 1),
        "clutter": 0.6 * np.clip((stats.edges - 0.02) / 0.2, 0, 1),
    }
    values = np.array(list(factors.values()), dtype=np.float64)
    difficulty = float(np.clip(0.12 + 0.68 * values.max() + 0.2 * values.mean(), 0.0, 1.0))
    named = tuple(name for name, value in factors.items() if value > 0.3)
    return ImageAssessment(difficulty, named, stats)
