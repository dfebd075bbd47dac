"""Calibration-set strategies: first_n, topk, random, stratified, hard_tail_mix, coverage and
widest_ranges.

Every strategy is a deterministic function of the pool, K and the seed: candidates are
ordered by id before any random draw, so the order rows arrive in never matters, and ties
are broken by id. The exception is `first_n`, whose whole point is the pool's order: it
reads each candidate's `position` in the ingest stream, never the row order it was handed
nor the id order. The ids come back in the order they should be fed to NNCF, which takes
the first `subset_size` items and never shuffles: the most informative picks come first
(hardest first, coverage picks first, stratified picks interleaved so any prefix keeps the
strata proportions), so a caller that truncates still gets a sensible set.

Strata (stratified, and the stratified parts of hard_tail_mix and coverage) come from the
condition column or the VLM's factor tags, as `selection.grouping` says
(`SelectionInput.strata`); the Selection records which was used.

Eligibility. Candidates without a difficulty (scoring failed, or the budget ran out) cannot
be ranked, so topk and the hard part of hard_tail_mix skip them. random and stratified do
not use difficulty, so every candidate is eligible: excluding the unscored would tie the
baselines to whichever shards were scored before the budget ran out, and the baselines
stand for what one gets without scoring at all. The stratified part of hard_tail_mix and
the fill of coverage follow the same rule, and so does first_n, the users' default.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import get_args

import numpy as np
import pyarrow as pa

from tasks.calibration.profiles import ActivationProfiles
from tasks.config import SelectionConfig, SelectionStrategy
from tasks.errors import SelectionError
from tasks.selection.coverage import aligned_profiles, greedy_cover, layer_targets, range_coverage, range_widths
from tasks.selection.pool import PoolItem, SelectionInput

logger = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = get_args(SelectionStrategy)


@dataclass(frozen=True)
class Selection:
    """The calibration set: `ids` in the order NNCF should see them, and why each one is there."""

    ids: tuple[str, ...]
    strategy: str
    k: int
    seed: int
    hard_fraction: float
    reasons: tuple[str, ...]  # per id: "first", "hard", "random", "stratified" or "coverage"
    strata: tuple[str, ...]  # per id: its stratum under `grouping`
    grouping: str = "condition"  # what the strata are made of: condition, factors, class_hint or none
    tail_quantile: float | None = None  # coverage only: the target quantile used
    layer_coverage: tuple[float, ...] | None = None  # coverage only: share of each layer's target range spanned

    def stratum_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for stratum in self.strata:
            counts[stratum] += 1
        return dict(sorted(counts.items()))

    def to_table(self) -> pa.Table:
        """The selection artefact: one row per id, `rank` 0 first, with the grouping its strata came from."""
        return pa.table(
            {
                "rank": pa.array(range(len(self.ids)), pa.int32()),
                "id": pa.array(self.ids, pa.string()),
                "reason": pa.array(self.reasons, pa.string()),
                "stratum": pa.array(self.strata, pa.string()),
                "grouping": pa.array([self.grouping] * len(self.ids), pa.string()),
            }
        )


Pick = tuple[PoolItem, str]  # (candidate, reason)


def _by_id(items: Sequence[PoolItem]) -> list[PoolItem]:
    return sorted(items, key=lambda item: item.id)


def _first_n(pool: SelectionInput, k: int) -> list[Pick]:
    # What nncf.quantize does with its subset_size (it takes the first items its dataset
    # yields) and what Ultralytics' INT8 export does with its calibration fraction: the users'
    # default, and the baseline a selection has to beat.
    return [(item, "first") for item in pool.in_pool_order()[:k]]


def _topk(items: Sequence[PoolItem], k: int) -> list[Pick]:
    ranked = sorted((item for item in items if item.scored), key=lambda item: (-item.difficulty, item.id))
    return [(item, "hard") for item in ranked[:k]]


def _widest_ranges(items: Sequence[PoolItem], k: int, profiles: ActivationProfiles | np.ndarray) -> list[Pick]:
    indices, values = aligned_profiles(items, profiles)
    _require(k, len(indices), "widest_ranges", "with an activation profile", " or profile more of the pool")
    widths = range_widths(values)
    ids = [items[i].id for i in indices]
    ranked = sorted(range(len(indices)), key=lambda row: (-widths[row], ids[row]))
    return [(items[indices[row]], "wide") for row in ranked[:k]]


def _random(items: Sequence[PoolItem], k: int, seed: int) -> list[Pick]:
    ordered = _by_id(items)
    order = np.random.default_rng(seed).permutation(len(ordered))[:k]
    return [(ordered[i], "random") for i in order]


def allocate(sizes: dict[str, int], k: int) -> dict[str, int]:
    """Proportional allocation of `k` over strata of `sizes` by largest remainder (Hamilton).

    Quotas are exact fractions (k·n/N), so rounding never depends on float error; equal
    remainders go to the stratum named first. When k ≥ the number of strata every stratum
    gets at least one, taken from the stratum most above its quota: a rare condition is the
    tail a calibration set must not lose.
    """
    total = sum(sizes.values())
    alloc = {s: k * n // total for s, n in sizes.items()}
    left = k - sum(alloc.values())
    for s in sorted(sizes, key=lambda s: (-(k * sizes[s] % total), s))[:left]:
        alloc[s] += 1
    if k >= len(sizes):
        for s in sorted(s for s, a in alloc.items() if a == 0):
            donor = min(
                (d for d, a in alloc.items() if a > 1),
                key=lambda d: (-(alloc[d] * total - k * sizes[d]), d),
            )
            alloc[donor] -= 1
            alloc[s] = 1
    return alloc


def _stratified(
    items: Sequence[PoolItem], k: int, seed: int, stratum_of: Mapping[str, str], reason: str = "stratified"
) -> list[Pick]:
    strata: dict[str, list[PoolItem]] = defaultdict(list)
    for item in _by_id(items):
        strata[stratum_of[item.id]].append(item)
    alloc = allocate({s: len(members) for s, members in strata.items()}, k)
    keyed = []
    for stratum, members in strata.items():
        # One generator per stratum, seeded by (seed, stratum name): a stratum's sample does
        # not change when another stratum gains or loses candidates.
        rng = np.random.default_rng([seed, zlib.crc32(stratum.encode())])
        for rank, i in enumerate(rng.permutation(len(members))[: alloc[stratum]]):
            # Interleave strata by each pick's position within its stratum's quota, so any
            # prefix of the list is itself close to proportional.
            keyed.append((Fraction(2 * rank + 1, 2 * alloc[stratum]), stratum, members[i]))
    keyed.sort(key=lambda entry: (entry[0], entry[1]))
    return [(item, reason) for _, _, item in keyed]


def _hard_count(k: int, hard_fraction: float) -> int:
    return math.floor(hard_fraction * k + 0.5)  # round half up: Python's round() would send 2.5 to 2


def _require(k: int, eligible: int, strategy: str, what: str, fix: str) -> None:
    if k > eligible:
        raise SelectionError(
            f"selection.k={k} but only {eligible} candidate(s) are eligible for {strategy!r} ({what}): "
            f"lower selection.k to ≤ {eligible}{fix}"
        )


def check_k_fits(k: int, candidates: int, pool_uri: str) -> None:
    """Refuse a K the pool cannot fill, before it is scored and paid for (raises SelectionError)."""
    if k > candidates:
        raise SelectionError(
            f"selection.k={k} but pool {pool_uri} holds {candidates} candidate(s) after its filters and sample: "
            "lower K (selection.k, --k, --ks) or widen the pool (pool.subset_size, sources, capture times)"
        )


def select_calibration_set(
    pool: SelectionInput, config: SelectionConfig, profiles: ActivationProfiles | np.ndarray | None = None
) -> Selection:
    """Exactly `config.k` distinct candidate ids from `pool` by `config.strategy`, in the order to feed NNCF.

    - first_n: the first k candidates in pool order (`PoolItem.position`, the ingest stream's
      order; the order given when no item has one), as nncf.quantize's subset_size and
      Ultralytics' export take them.
    - topk: the k hardest by difficulty, ties by id; unscored candidates are not eligible.
    - random: a uniform sample with numpy's default_rng(seed), drawn from the id-sorted pool.
    - stratified: proportional over strata (`config.grouping`: the condition column or the
      VLM's factor tags, see `SelectionInput.strata`), largest-remainder rounding, ≥ 1 per
      stratum when k allows; seeded sample within each.
    - hard_tail_mix: round(hard_fraction·k) (half up) hardest first, the rest stratified
      over the remaining candidates.
    - coverage: needs `profiles` (per-candidate activation min/max,
      `tasks.calibration.profiles`); greedy picks that cover each layer's
      [coverage_tail_quantile, 1 − q] pool range (see `tasks.selection.coverage`), then the
      rest stratified over the remaining candidates.
    - widest_ranges: needs `profiles`; the k candidates whose activation ranges reach widest
      past the pool's median image, layer by layer (`tasks.selection.coverage.range_widths`),
      widest first, ties by id. No seed, no difficulty: built for MEAN_MINMAX, where a set of
      narrow-range frames clips everything wider.

    Raises SelectionError when K exceeds the eligible candidates, naming both and the fix,
    and when the grouping asked for has nothing to group by or the pool order is ambiguous.
    """
    strategy, k, seed, hard_fraction = config.strategy, config.k, config.seed, config.hard_fraction
    tail_quantile = config.coverage_tail_quantile
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown selection strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if k <= 0:
        raise SelectionError(f"selection.k must be ≥ 1, got {k}: a calibration set needs at least one image")
    if seed < 0:
        raise SelectionError(f"selection.seed must be ≥ 0 (numpy seeds are non-negative), got {seed}")
    if not 0.0 <= hard_fraction <= 1.0:
        raise SelectionError(f"selection.hard_fraction must be in [0, 1], got {hard_fraction}")
    items = pool.items
    scored = sum(item.scored for item in items)
    unscored_note = f"{len(items) - scored} without a difficulty excluded"
    strata = pool.strata(config.grouping)
    coverage = None
    if strategy == "first_n":
        _require(k, len(items), strategy, "the whole pool", " or add candidates to the pool")
        picks = _first_n(pool, k)
    elif strategy == "topk":
        _require(k, scored, strategy, f"scored; {unscored_note}", " or score more candidates")
        picks = _topk(items, k)
    elif strategy == "random":
        _require(k, len(items), strategy, "the whole pool", " or add candidates to the pool")
        picks = _random(items, k, seed)
    elif strategy == "stratified":
        _require(k, len(items), strategy, "the whole pool", " or add candidates to the pool")
        picks = _stratified(items, k, seed, strata.of)
    elif strategy == "hard_tail_mix":
        _require(k, len(items), strategy, "the whole pool", " or add candidates to the pool")
        n_hard = _hard_count(k, hard_fraction)
        if n_hard > scored:
            raise SelectionError(
                f"hard_tail_mix needs round({hard_fraction}·{k}) = {n_hard} scored candidates for its hard part "
                f"but only {scored} have a difficulty ({unscored_note}): lower selection.hard_fraction or "
                "selection.k, or score more candidates"
            )
        picks = _topk(items, n_hard)
        chosen = {item.id for item, _ in picks}
        picks += _stratified([item for item in items if item.id not in chosen], k - n_hard, seed, strata.of)
    elif profiles is None:
        raise SelectionError(
            f"strategy {strategy!r} needs activation profiles: compute them with "
            "tasks.calibration.profiles.profile_pool on the FP IR and pass profiles="
        )
    elif strategy == "widest_ranges":
        picks = _widest_ranges(items, k, profiles)
    else:
        _require(k, len(items), strategy, "the whole pool", " or add candidates to the pool")
        indices, values = aligned_profiles(items, profiles)
        targets = layer_targets(values, tail_quantile)
        rows = greedy_cover(values, [items[i].id for i in indices], k, targets)
        picks = [(items[indices[row]], "coverage") for row in rows]
        chosen = {item.id for item, _ in picks}
        if len(picks) < k:
            picks += _stratified([item for item in items if item.id not in chosen], k - len(picks), seed, strata.of)
        selected = {item.id for item, _ in picks}
        in_set = [row for row, i in enumerate(indices) if items[i].id in selected]
        coverage = tuple(float(c) for c in range_coverage(values[in_set], targets))
    ids = tuple(item.id for item, _ in picks)
    assert len(ids) == k == len(set(ids)), f"{strategy} returned {len(ids)} ids ({len(set(ids))} distinct), k={k}"
    selection = Selection(
        ids=ids,
        strategy=strategy,
        k=k,
        seed=seed,
        hard_fraction=hard_fraction,
        reasons=tuple(reason for _, reason in picks),
        strata=tuple(strata.of[item.id] for item, _ in picks),
        grouping=strata.grouping,
        tail_quantile=tail_quantile if strategy == "coverage" else None,
        layer_coverage=coverage,
    )
    logger.info(
        "selection: %s k=%d seed=%d strata by %s: %s", strategy, k, seed, strata.grouping, selection.stratum_counts()
    )
    return selection
