"""Paired bootstrap intervals over eval images for mAP gaps and their differences.

Two INT8 models evaluated on the same images are compared on the same resamples: each
resample draws N images with replacement, and every model's mAP@[.5:.95] is re-accumulated
on it from its per-image matching (`tasks.evaluation.matches.weighted_map`). The difference
of two gaps on one resample, (FP16 − A) − (FP16 − B), is B − A there: the FP16 model
cancels, but image-to-image variation shared by the models cancels too, which is why a
paired interval is much narrower than two separate ones. The interval is the percentile
interval of the resampled statistic (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13).

The interval is over eval images only: it says how much the figure would move on another
eval sample of the same size and mix, not how much another calibration draw (seed) would
move it. The ablation table reports seed spread separately.

scipy.stats.bootstrap is not used: its resamples are internal to each call, and here one
set of resamples must be shared by every model compared on a split, so that each
difference is paired. Drawing them is a few lines of numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.errors import TailcalError
from tasks.evaluation.matches import ImageMatches, weighted_map

CONFIDENCE = 0.95
RESAMPLES = 1000


class BootstrapError(TailcalError):
    """A bootstrap interval cannot be computed as asked (other splits, too few images, no ground truth)."""


@dataclass(frozen=True)
class Interval:
    """A statistic on the split as it is (`estimate`) and its percentile bootstrap interval.

    All values in mAP@[.5:.95] units (0.01 = one mAP point); `confidence` is the
    interval's coverage (0.95), `resamples` how many resamples it rests on.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def describe(self) -> str:
        """`+0.0058 [+0.0031, +0.0086]`: the estimate and the interval's bounds, signed."""
        return f"{self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"

    def metrics(self, name: str) -> dict[str, float]:
        """`<name>.ci_low` and `<name>.ci_high`, for MLflow."""
        return {f"{name}.ci_low": self.low, f"{name}.ci_high": self.high}


def resample_weights(n_images: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """int64 [resamples, n_images]: how often each of `resamples` draws of n_images images with
    replacement took each image. Seeded: the same arguments give the same resamples."""
    if n_images < 2:
        raise BootstrapError(f"a bootstrap over eval images needs at least 2 images, got {n_images}")
    if resamples < 1:
        raise BootstrapError(f"resamples must be ≥ 1, got {resamples}")
    draws = np.random.default_rng(seed).integers(0, n_images, size=(resamples, n_images))
    rows = np.arange(resamples)[:, None] * n_images
    return np.bincount((draws + rows).ravel(), minlength=resamples * n_images).reshape(resamples, n_images)


class PairedBootstrap:
    """One set of resamples of one split's images, shared by every model compared on that split.

    Each model's mAP per resample is computed once (`maps`) and reused by every interval
    that involves it. Models are `ImageMatches` from the same split; another split raises
    BootstrapError.
    """

    def __init__(
        self, reference: ImageMatches, resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
    ) -> None:
        if not 0 < confidence < 1:
            raise BootstrapError(f"confidence must be in (0, 1), got {confidence}")
        self.reference = reference
        self.confidence = confidence
        self.weights = resample_weights(len(reference), resamples, seed)
        self._maps: dict[int, tuple[ImageMatches, float, np.ndarray]] = {}

    @property
    def resamples(self) -> int:
        return len(self.weights)

    def maps(self, model: ImageMatches) -> tuple[float, np.ndarray]:
        """(mAP on the split, mAP on each resample [resamples]) of one model, computed once per model."""
        key = id(model)
        if key not in self._maps:
            self._maps[key] = (model, *self.resampled_map(model))  # the model is kept so its id is not reused
        _, whole, resampled = self._maps[key]
        return whole, resampled

    def resampled_map(self, model: ImageMatches) -> tuple[float, np.ndarray]:
        """`maps` without keeping anything: for callers that hold many models and keep only the figures."""
        if not model.same_split(self.reference):
            raise BootstrapError(
                "the models were evaluated on different eval splits (images, categories or ground truth differ): "
                "a paired interval needs every model evaluated on the same split"
            )
        whole = float(weighted_map(model, np.ones(len(model), np.int64))[0])
        resampled = weighted_map(model, self.weights)
        if math.isnan(whole) or np.isnan(resampled).any():
            raise BootstrapError(
                f"some resamples of the {len(model)} eval images hold no ground-truth box: "
                "evaluate on a split with labelled objects in most images"
            )
        return whole, resampled

    def interval(self, estimate: float, samples: np.ndarray) -> Interval:
        """The percentile interval of `samples` (one value per resample) around `estimate`."""
        tail = (1 - self.confidence) / 2
        low, high = np.quantile(samples, [tail, 1 - tail])
        return Interval(float(estimate), float(low), float(high), self.confidence, len(samples))

    def difference(self, minuend: ImageMatches, subtrahend: ImageMatches) -> Interval:
        """mAP(minuend) − mAP(subtrahend), e.g. FP16 − weights-only (the weight part of the gap)."""
        (a, a_b), (b, b_b) = self.maps(minuend), self.maps(subtrahend)
        return self.interval(a - b, a_b - b_b)

    def gap(self, fp16: ImageMatches, int8: ImageMatches) -> Interval:
        """The gap FP16 − INT8 (positive: INT8 worse)."""
        return self.difference(fp16, int8)

    def mean_gap_difference(
        self, fp16: ImageMatches, models: Sequence[ImageMatches], references: Sequence[ImageMatches]
    ) -> Interval:
        """mean gap of `models` − mean gap of `references` (e.g. a strategy's seeds against
        `random`'s): negative when `models` lose less mAP."""
        if not models or not references:
            raise BootstrapError("a difference of mean gaps needs at least one model on each side")
        f, f_b = self.maps(fp16)
        sides = []
        for group in (models, references):
            wholes, resampled = zip(*(self.maps(model) for model in group), strict=True)
            sides.append((f - float(np.mean(wholes)), f_b - np.mean(resampled, axis=0)))
        (gap_m, gap_m_b), (gap_r, gap_r_b) = sides
        return self.interval(gap_m - gap_r, gap_m_b - gap_r_b)


def paired_gap_difference(
    fp16: ImageMatches,
    int8_a: ImageMatches,
    int8_b: ImageMatches,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """gap(A) − gap(B) with gap = FP16 mAP − INT8 mAP (mAP@[.5:.95]), and its paired bootstrap
    interval over the eval images: negative when A loses less than B.

    All three are `ImageMatches` of one split. Raises BootstrapError for other splits,
    fewer than 2 images, or resamples without ground truth.
    """
    return PairedBootstrap(fp16, resamples, seed, confidence).mean_gap_difference(fp16, [int8_a], [int8_b])
