"""The ablation table: per (K, strategy, estimator, bias correction), the INT8−FP16 gap over
seeds, and its difference from reference strategies with a paired bootstrap interval over the
eval images.

A reference (`first_n`, the users' default, and `random`) is compared at the same K, range
estimator and bias correction. Its interval comes from `tasks.evaluation.bootstrap`: every cell's INT8
model is re-accumulated on the same resamples of the eval images, so the difference is
paired image by image. A reference the grid does not hold reads "n/a".

A row whose strategy selects the same images whatever the seed (first_n, topk, or a strategy
that drew nothing at that K, e.g. coverage when its greedy picks fill K) ran once: its seeds
column reads "deterministic", not a seed count, so no one reads its ± as seed spread. The
bias-correction column appears only when the grid holds more than one bias correction.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.evaluation.bootstrap import CONFIDENCE, RESAMPLES, Interval, PairedBootstrap
from tasks.evaluation.matches import ImageMatches

REFERENCES = ("first_n", "random")


@dataclass(frozen=True)
class Cell:
    """One INT8 model of the grid: its gap (FP16 − INT8 mAP@[.5:.95]) and, when kept, where its
    per-image matches are (`ImageMatches.save`) and the gap's activation part."""

    k: int
    strategy: str
    estimator: str
    seed: int
    gap: float
    int8_map: float
    per_condition_gap: dict[str, float]
    matches_path: str | None = None
    activation_part: float | None = None
    bias_correction: str = "fast"
    deterministic: bool = False  # every seed selects these same images: the cell stands for all of them


@dataclass(frozen=True)
class TableRow:
    """Cells of one (K, strategy, estimator, bias correction) over seeds; `versus[reference]` is the
    difference of mean gaps from the reference strategy with its interval, None where it cannot
    be computed. `deterministic`: the strategy selects the same images for every seed, so `seeds`
    is 1 and says nothing about seed spread."""

    k: int
    strategy: str
    estimator: str
    seeds: int
    gap_mean: float
    gap_std: float
    int8_map_mean: float
    per_condition_gap: dict[str, float]  # mean over seeds
    activation_part_mean: float | None = None
    versus: dict[str, Interval | None] = field(default_factory=dict)
    bias_correction: str = "fast"
    deterministic: bool = False

    @property
    def seeds_text(self) -> str:
        return "deterministic" if self.deterministic else str(self.seeds)

    def as_record(self) -> dict[str, object]:
        """The row's key figures, rounded to 4 decimals, for a Prefect table artifact."""
        record: dict[str, object] = {
            "k": self.k,
            "strategy": self.strategy,
            "estimator": self.estimator,
            "bias_correction": self.bias_correction,
            "seeds": self.seeds_text,
            "gap_mean": round(self.gap_mean, 4),
            "gap_std": round(self.gap_std, 4),
        }
        for reference, interval in self.versus.items():
            record[f"vs_{reference}"] = _versus_text(self, reference, interval)
        return record


def summarize_cells(
    cells: list[Cell],
    fp16_matches: ImageMatches | None = None,
    references: Sequence[str] = REFERENCES,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[TableRow]:
    """Group cells by (K, strategy, estimator, bias correction): mean ± sample std of the gap over
    seeds, and for each of `references` the paired bootstrap interval of (this mean gap − the
    reference's, at the same K, estimator and bias correction) over the eval images. A group is
    deterministic when its cells say so.

    Intervals need `fp16_matches` and every compared cell's `matches_path` (all on the same
    split); without them, or without the reference at that K and estimator, the entry is
    None. Raises BootstrapError (tasks.evaluation.bootstrap) when the matches come from
    different splits.
    """
    groups: dict[tuple[int, str, str, str], list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.k, cell.strategy, cell.estimator, cell.bias_correction)].append(cell)
    resampled = _ResampledGaps(fp16_matches, resamples, seed, confidence) if fp16_matches is not None else None
    rows = []
    for (k, strategy, estimator, bias_correction), members in sorted(groups.items()):
        gaps = [c.gap for c in members]
        conditions = sorted({name for c in members for name in c.per_condition_gap})
        parts = [c.activation_part for c in members if c.activation_part is not None]
        versus = {}
        for reference in references:
            others = groups.get((k, reference, estimator, bias_correction), [])
            versus[reference] = (
                resampled.difference(members, others) if resampled and others and reference != strategy else None
            )
        rows.append(
            TableRow(
                k=k,
                strategy=strategy,
                estimator=estimator,
                seeds=len(members),
                gap_mean=statistics.fmean(gaps),
                gap_std=statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
                int8_map_mean=statistics.fmean(c.int8_map for c in members),
                per_condition_gap={
                    name: statistics.fmean(c.per_condition_gap[name] for c in members if name in c.per_condition_gap)
                    for name in conditions
                },
                activation_part_mean=statistics.fmean(parts) if parts else None,
                versus=versus,
                bias_correction=bias_correction,
                deterministic=all(c.deterministic for c in members),
            )
        )
    return rows


class _ResampledGaps:
    """Each cell's gap on every resample, computed once from its matches file and kept as [B] floats
    (the matches themselves are read again only if needed, so memory stays flat over a big grid)."""

    def __init__(self, fp16: ImageMatches, resamples: int, seed: int, confidence: float) -> None:
        self.bootstrap = PairedBootstrap(fp16, resamples, seed, confidence)
        self.fp16, self.fp16_resampled = self.bootstrap.maps(fp16)
        self._gaps: dict[str, tuple[float, np.ndarray]] = {}

    def gap(self, path: str) -> tuple[float, np.ndarray]:
        if path not in self._gaps:
            whole, resampled = self.bootstrap.resampled_map(ImageMatches.load(Path(path)))
            self._gaps[path] = (self.fp16 - whole, self.fp16_resampled - resampled)
        return self._gaps[path]

    def difference(self, cells: list[Cell], references: list[Cell]) -> Interval | None:
        if any(c.matches_path is None for c in [*cells, *references]):
            return None
        sides = []
        for group in (cells, references):
            wholes, resampled = zip(*(self.gap(c.matches_path) for c in group), strict=True)
            sides.append((float(np.mean(wholes)), np.mean(resampled, axis=0)))
        (mine, mine_b), (theirs, theirs_b) = sides
        return self.bootstrap.interval(mine - theirs, mine_b - theirs_b)


def _versus_text(row: TableRow, reference: str, interval: Interval | None) -> str:
    if row.strategy == reference:
        return "(reference)"
    return interval.describe() if interval is not None else "n/a"


def render_table(rows: list[TableRow], fp16_map: float, references: Sequence[str] = REFERENCES) -> str:
    """Markdown: one line per (K, strategy, estimator[, bias correction]), gaps in mAP units
    (positive = INT8 worse); the bias-correction column only when the rows hold more than one."""
    conditions = sorted({name for row in rows for name in row.per_condition_gap})
    by_bias = len({row.bias_correction for row in rows}) > 1
    keys = ["K", "strategy", "estimator", *(["bias correction"] if by_bias else [])]
    intervals = [i for row in rows for i in row.versus.values() if i is not None]
    header = [
        *keys,
        "seeds",
        "gap mean ± std",
        *[f"Δ vs {reference}" for reference in references],
        "activation part",
        "INT8 mAP",
        *conditions,
    ]
    lines = [f"FP16 mAP@[.5:.95] = {fp16_map:.4f}. Gap = FP16 − INT8 (positive: INT8 worse)."]
    if references:
        how = (
            f"{100 * intervals[0].confidence:.0f} % paired bootstrap interval over the eval images, "
            f"{intervals[0].resamples} resamples"
            if intervals
            else "paired bootstrap interval over the eval images"
        )
        same = "K, estimator and bias correction" if by_bias else "K and estimator"
        lines.append(
            f"Δ vs X = this row's mean gap − X's at the same {same} (negative: loses less than X), "
            f"[{how}]; the interval covers eval-image sampling, the ± std covers seeds. "
            "n/a: X is not in this grid (or its per-image matches were not kept). "
            "Activation part = weights-only − INT8 mAP, the part calibration sets. "
            'Seeds "deterministic": every seed selects the same images, so the row ran once '
            "(no seed spread to report)."
        )
    lines += [
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < len(keys) else "---:" for i in range(len(header))) + "|",
    ]
    for row in rows:
        part = row.activation_part_mean
        cells = [
            str(row.k),
            row.strategy,
            row.estimator,
            *([row.bias_correction] if by_bias else []),
            row.seeds_text,
            # One seed has no spread to report: "± 0.0000" would claim a certainty it lacks.
            f"{row.gap_mean:+.4f} ± {row.gap_std:.4f}" if row.seeds > 1 else f"{row.gap_mean:+.4f} ± n/a",
            *[_versus_text(row, reference, row.versus.get(reference)) for reference in references],
            "n/a" if part is None or math.isnan(part) else f"{part:+.4f}",
            f"{row.int8_map_mean:.4f}",
            *[f"{row.per_condition_gap.get(name, float('nan')):+.4f}" for name in conditions],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
