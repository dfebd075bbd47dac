"""When each scene of the pool is captured, on which line, under which condition.

A production line's archive is not shuffled: conditions come in runs tied to time and
to a camera. Lighting fails for a night shift on every line at once; one camera's lens is
dirty for a day; one line runs fast and blurs its frames for a few hours. The exporter
writes the frames in capture order, so the first N rows of such a pool (what
`nncf.quantize` and Ultralytics' export calibrate on) cover a few hours, not the mix.

Two orderings (`SyntheticConfig.ordering`):

- `iid`: every scene draws its own condition from the mix (the scene's own generator,
  `render.render_scene`); the pool's order carries no structure.
- `runs`: the scenes are planned first. Scene i is captured by line `i mod 4` at
  `i · scene_interval_s`; lines capture in lockstep, so each line has its own timeline of
  slots. The mix is met exactly, not only in expectation, so a small pool still holds
  every condition and differs from an `iid` pool of the same seed in order only:
  1. a shared timeline gives each `shared_conditions` member round(weight · slots) slots
     (largest remainder), cut into runs of `run_length` slots on average, the rest left
     free, and the runs in a seeded random order; a shared run sets that condition on
     every line;
  2. each line fills its free slots the same way from the other conditions, their weights
     renormalised, in its own seeded order.

Burst lengths are drawn up front in `runs` mode (one generator per split), so the
number of scenes that make up `n` frames is known before the plan is made.

No library plans episodes over a timeline with exact totals; this is hand-written with
numpy's seeded generators.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.config import SyntheticConfig
from tasks.synth.render import CONDITION_WEIGHTS, CONDITIONS

SOURCES = ("line-1", "line-2", "line-3", "line-4")
_BURSTS, _SHARED, _LINE = 1, 2, 3  # generator streams of the plan, apart from the scenes' own


@dataclass(frozen=True)
class ScenePlan:
    """Scene `index` of a `runs` pool: its condition and how many frames its burst has."""

    index: int
    condition: str
    frames: int


def source_of(scene_index: int) -> str:
    """The line that captures scene `scene_index` (lines take turns)."""
    return SOURCES[scene_index % len(SOURCES)]


def condition_weights(mix: dict[str, float] | None) -> list[float]:
    """A config mix (condition → weight, None for the built-in) as probabilities in `CONDITIONS` order."""
    if mix is None:
        return list(CONDITION_WEIGHTS.values())
    total = sum(mix.values())
    return [mix.get(name, 0.0) / total for name in CONDITIONS]


def plan_scenes(config: SyntheticConfig, split_code: int, n_frames: int) -> list[ScenePlan]:
    """The `runs` plan of enough scenes for `n_frames` frames (the last burst may be cut by the caller)."""
    bursts = np.random.default_rng([config.seed, split_code, _BURSTS])
    lengths: list[int] = []
    total = 0
    while total < n_frames:
        in_burst = bursts.random() < config.burst_probability
        lengths.append(int(bursts.integers(2, config.max_burst + 1)) if in_burst else 1)
        total += lengths[-1]
    conditions = plan_conditions(config, split_code, len(lengths))
    return [ScenePlan(i, c, n) for i, (c, n) in enumerate(zip(conditions, lengths, strict=True))]


def plan_conditions(config: SyntheticConfig, split_code: int, scenes: int) -> list[str]:
    """The condition of each of `scenes` scenes under the `runs` ordering (see the module docstring)."""
    weights = dict(zip(CONDITIONS, condition_weights(config.conditions), strict=True))
    shared = [c for c in CONDITIONS if c in config.shared_conditions]
    own = [c for c in CONDITIONS if c not in config.shared_conditions]
    lines = len(SOURCES)
    slots = -(-scenes // lines)  # slots on the longest line's timeline
    timeline = _runs(
        {c: weights[c] for c in shared},
        slots,
        config.run_length,
        np.random.default_rng([config.seed, split_code, _SHARED]),
    )
    plan: list[str | None] = [None] * scenes
    own_total = sum(weights[c] for c in own)
    for line in range(lines):
        indices = range(line, scenes, lines)
        free = [i for slot, i in enumerate(indices) if timeline[slot] is None]
        for slot, i in enumerate(indices):
            plan[i] = timeline[slot]
        if not free:
            continue
        # When every weight sits on shared conditions, the shared timeline leaves no slot free.
        assert own_total > 0.0, "free slots without an own condition to fill them"
        filled = _runs(
            {c: weights[c] / own_total for c in own},
            len(free),
            config.run_length,
            np.random.default_rng([config.seed, split_code, _LINE, line]),
            fill=True,
        )
        for i, condition in zip(free, filled, strict=True):
            plan[i] = condition
    return [str(c) for c in plan]


def _runs(
    weights: dict[str, float], slots: int, run_length: float, rng: np.random.Generator, fill: bool = False
) -> list[str | None]:
    """`slots` slots holding each condition round(weight · slots) times, in runs of `run_length`
    on average, in a seeded order; with `fill` the weights sum to 1 and every slot is taken,
    otherwise the slots left over stay None (free)."""
    names = list(weights)
    quotas = _largest_remainder([weights[c] for c in names], slots, fill)
    free = slots - sum(quotas)
    pieces: list[tuple[str | None, int]] = []
    for name, quota in [*zip(names, quotas, strict=True), (None, free)]:
        pieces += [(name, length) for length in _cut(quota, run_length, rng)]
    order = rng.permutation(len(pieces))
    timeline: list[str | None] = []
    for index in order:
        name, length = pieces[index]
        timeline += [name] * length
    return timeline


def _largest_remainder(weights: Sequence[float], total: int, fill: bool) -> list[int]:
    """Integer shares of `total` proportional to `weights` (Hamilton's method). Without `fill`
    the weights sum to ≤ 1 and the share of the rest (1 − Σ) takes part in the rounding."""
    rest = max(0.0, 1.0 - sum(weights)) if not fill else 0.0
    exact = [w * total for w in (*weights, rest)]
    shares = [int(np.floor(x)) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares[: len(weights)]


def _cut(quota: int, run_length: float, rng: np.random.Generator) -> list[int]:
    """`quota` slots cut at random into round(quota / run_length) runs (at least one), each ≥ 1."""
    if quota <= 0:
        return []
    runs = min(quota, max(1, round(quota / run_length)))
    cuts = np.sort(rng.choice(np.arange(1, quota), size=runs - 1, replace=False)) if runs > 1 else np.array([], int)
    return [b - a for a, b in itertools.pairwise([0, *cuts.tolist(), quota])]
