"""Activation-range coverage: greedily pick images whose activations reach each layer's extremes;
and how wide each image's ranges are, for the `widest_ranges` strategy (`range_widths`).

Why this helps PTQ: NNCF builds every activation range from per-image minima and maxima.
Under MINMAX the range is the union over the calibration images, so a layer whose extreme
images were not selected gets a range narrower than the pool's, and the pool's activations
beyond it are clipped at inference. Under MEAN_MINMAX (NNCF's default) the range is the
average of per-image min/max: one image moves it by (its max − mean)/K, so images that reach
a layer's extremes still pull its range toward the pool's, and a set with none of them for a
layer leaves that layer with the narrowest range of all. Difficulty scores and condition
tags know nothing of layers; this strategy makes sure that every profiled layer has images
near both ends of its pool-wide range, using as few images as it takes, and then fills the
rest of K stratified so the averages are not made of outliers alone. The greedy picks come
first in the returned order: NNCF takes the first `subset_size` items, so the ids must be
fed in selection order, and a truncated set then keeps its coverage picks.

Target per layer: the `tail_quantile` / `1 − tail_quantile` quantiles of the pool's per-image
minima / maxima, rounded toward the middle of the pool (numpy's "higher" / "lower" method)
so the bounds are values images actually reach. The default 0.001 leaves out the single most extreme image at each
end in any pool (and ~0.1 % in big ones): under MINMAX one lone outlier would set a layer's
range for everyone and coarsen its INT8 step for the bulk of activations, and under
MEAN_MINMAX it would barely move the range anyway, so chasing it wastes a slot. A group
of images out there (a real tail) lies inside the target. `tail_quantile=0` covers the full
pool range.

Gain of a candidate: summed over layers, the fraction of the target range newly covered
when the set's [min, max] is extended to include the candidate, minus how much further the
set would then reach past the target, in the same target widths. The penalty is what keeps
outliers out: under MINMAX reaching past the target widens the INT8 step for every
activation of that layer, so one width of overshoot is weighed against one width covered;
a lone outlier never wins, while an image at the target bound does the same job for free.
With tail_quantile=0 nothing lies past the target and the gain is pure coverage. The
largest gain wins, ties go to the smaller id, and picking stops when no candidate adds more
than `MIN_GAIN`, which happens after at most two picks per layer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.calibration.profiles import ActivationProfiles
from tasks.errors import SelectionError
from tasks.selection.pool import PoolItem, SelectionInput

logger = logging.getLogger(__name__)

DEFAULT_TAIL_QUANTILE = 0.001
MIN_GAIN = 1e-4  # 0.01 % of one layer's target range: below this a pick adds nothing a range would notice
_EPS = 1e-12


@dataclass(frozen=True)
class LayerTargets:
    """Per-layer target range [low, high] of the pool's activations."""

    low: np.ndarray
    high: np.ndarray

    @property
    def width(self) -> np.ndarray:
        return self.high - self.low


def layer_targets(values: np.ndarray, tail_quantile: float = DEFAULT_TAIL_QUANTILE) -> LayerTargets:
    """Robust pool range per layer from per-image (min, max) profiles `values` [n, layers, 2]."""
    if not 0.0 <= tail_quantile < 0.5:
        raise SelectionError(f"tail_quantile must be in [0, 0.5), got {tail_quantile}: 0.001 ignores lone outliers")
    # Rounded toward the middle of the pool, so each bound is a value some image reaches.
    low = np.quantile(values[:, :, 0], tail_quantile, axis=0, method="higher")
    high = np.quantile(values[:, :, 1], 1.0 - tail_quantile, axis=0, method="lower")
    return LayerTargets(low.astype(np.float64), high.astype(np.float64))


def range_coverage(values: np.ndarray, targets: LayerTargets) -> np.ndarray:
    """Fraction of each layer's target range spanned by the union [min, max] of the images in `values`.

    A layer whose target has zero width (e.g. a constant activation) counts as covered.
    """
    if len(values) == 0:
        return np.zeros(len(targets.low))
    low = values[:, :, 0].min(axis=0)
    high = values[:, :, 1].max(axis=0)
    spanned = np.clip(np.minimum(targets.high, high) - np.maximum(targets.low, low), 0.0, None)
    width = targets.width
    return np.where(width > _EPS, spanned / np.where(width > _EPS, width, 1.0), 1.0)


def aligned_profiles(
    items: Sequence[PoolItem], profiles: ActivationProfiles | np.ndarray
) -> tuple[list[int], np.ndarray]:
    """Indices into `items` that have a profile, and their profile rows, in the same order.

    An array (or profiles without ids) must have one row per item, in pool order; profiles
    with ids are matched by id, and pool items without a profile only take part in the fill.
    """
    values = profiles.values if isinstance(profiles, ActivationProfiles) else np.asarray(profiles)
    ids = profiles.ids if isinstance(profiles, ActivationProfiles) else None
    if values.ndim != 3 or values.shape[2] != 2 or values.shape[1] == 0:
        raise SelectionError(
            f"activation profiles must be [n_candidates, n_layers ≥ 1, 2], got shape {values.shape}: "
            "profile the pool with tasks.calibration.profiles.profile_pool"
        )
    if not np.isfinite(values).all():
        raise SelectionError("activation profiles hold NaN or inf: re-run activation_profiles on valid inputs")
    if (values[:, :, 0] > values[:, :, 1]).any():
        raise SelectionError(
            "activation profiles hold a minimum above its maximum: each [image, layer] pair must be (min, max)"
        )
    if ids is None:
        if len(values) != len(items):
            raise SelectionError(
                f"{len(values)} profile rows for {len(items)} candidates: profile every candidate in pool order, "
                "or pass ActivationProfiles with ids"
            )
        # Row r is the r-th candidate of the ingest stream (its `position`), whatever order the
        # items were handed in.
        index_of = {id(item): i for i, item in enumerate(items)}
        ordered = SelectionInput(tuple(items)).in_pool_order()
        return [index_of[id(item)] for item in ordered], values.astype(np.float64)
    repeated = sorted(candidate_id for candidate_id, n in Counter(ids).items() if n > 1)
    if repeated:
        raise SelectionError(
            f"activation profiles name {len(repeated)} candidate id(s) more than once (e.g. {repeated[:3]}): "
            "profile each candidate once"
        )
    row_of = {candidate_id: row for row, candidate_id in enumerate(ids)}
    indices = [i for i, item in enumerate(items) if item.id in row_of]
    stray = len(row_of) - len(indices)
    if stray:
        logger.warning("activation profiles: %d profiled id(s) are not in the pool and are ignored", stray)
    if not indices:
        raise SelectionError("no candidate in the pool has an activation profile: profile the pool's images by id")
    rows = [row_of[items[i].id] for i in indices]
    return indices, values[rows].astype(np.float64)


def range_widths(values: np.ndarray) -> np.ndarray:
    """How far each image's activations reach, layer by layer, past the pool's typical image:
    `[n]` from per-image (min, max) profiles `values` [n, layers, 2].

    Per layer, (max − the pool's median max) + (the pool's median min − min), in units of the
    layer's pool range (99th percentile of maxima − 1st percentile of minima), then the mean
    over layers. Positive: wider than the median image. Layers whose pool range is zero count
    0. Hand-written: no library scores images by activation range.

    Why it matters: under MEAN_MINMAX (NNCF's default) a layer's range is the mean of the
    calibration images' per-image min/max, so a set of narrow-range images (on the claim
    benchmark, low-contrast and low-light scenes) gives narrow ranges that clip every wider
    image at inference; the widest images pull the averaged range toward the pool's extremes.

    Not robust to outliers by design: an image far past the pool's range on some layer (a glare,
    a frame that decoded to noise) ranks first, and under MEAN_MINMAX it moves that layer's range
    by (its max − the set's mean max)/K, which a small K feels most. On the claim benchmark's
    3,000 frames no image reached past 1.4 layer ranges.
    """
    values = np.asarray(values, dtype=np.float64)
    mins, maxs = values[:, :, 0], values[:, :, 1]
    span = np.quantile(maxs, 0.99, axis=0) - np.quantile(mins, 0.01, axis=0)
    # Relative to the layer's own magnitude, so a layer of tiny activations is not taken for a flat one.
    magnitude = np.abs(values).max(axis=(0, 2))
    live = span > np.maximum(magnitude * 1e-9, np.finfo(np.float64).tiny)
    reach = (maxs - np.median(maxs, axis=0)) + (np.median(mins, axis=0) - mins)
    per_layer = np.where(live, reach / np.where(live, span, 1.0), 0.0)
    # Rounded so that widths equal in exact arithmetic (layers in another order) tie, and go by id.
    return np.round(per_layer.mean(axis=1), 12)


def greedy_cover(values: np.ndarray, ids: Sequence[str], k: int, targets: LayerTargets) -> list[int]:
    """Rows of `values` in pick order, at most `k`, until no row adds more than MIN_GAIN coverage."""
    live = targets.width > _EPS
    mins, maxs = values[:, live, 0], values[:, live, 1]
    low, high, width = targets.low[live], targets.high[live], targets.width[live]
    id_rank = np.empty(len(ids), np.int64)
    id_rank[np.argsort(np.asarray(ids, dtype=object), kind="stable")] = np.arange(len(ids))
    set_low = np.full(len(low), np.inf)
    set_high = np.full(len(low), -np.inf)
    covered = np.zeros(len(low))
    beyond = np.zeros(len(low))
    available = np.ones(len(values), bool)
    picks: list[int] = []
    while len(picks) < k and live.any():
        new_low = np.minimum(set_low, mins)
        new_high = np.maximum(set_high, maxs)
        spanned = np.clip(np.minimum(high, new_high) - np.maximum(low, new_low), 0.0, None) / width
        reach = (np.clip(low - new_low, 0.0, None) + np.clip(new_high - high, 0.0, None)) / width
        gain = (spanned - covered).sum(axis=1) - (reach - beyond).sum(axis=1)
        gain = np.where(available, gain, -np.inf)
        best = gain.max()
        if best <= MIN_GAIN:
            break
        # Ties by id; a tolerance so float noise in the sum does not decide between equal gains.
        near = np.flatnonzero(gain >= best - 1e-9 * len(low))
        pick = int(near[np.argmin(id_rank[near])])
        picks.append(pick)
        available[pick] = False
        set_low, set_high = new_low[pick], new_high[pick]
        covered, beyond = spanned[pick], reach[pick]
    logger.info(
        "coverage: %d greedy pick(s) cover %.1f %% of %d layers' target ranges",
        len(picks),
        100.0 * (covered.mean() if len(covered) else 1.0),
        int(live.sum()),
    )
    return picks
