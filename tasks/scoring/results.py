"""Combine per-pass records into the scores table, and forecast a run's cost.

The scores table (written as scores.parquet) has one row per candidate: the mean
difficulty over the passes that produced a score, each pass's score, whether it came from
the cache, its cost and model, and the reason when no pass produced a score.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy.stats import spearmanr

from tasks.scoring.passes import ScoreRecord


@dataclass(frozen=True)
class ScoringSummary:
    candidates: int
    scored: int  # candidates with a mean difficulty
    failed: int
    unscored: int
    calls: int
    cache_hits: int
    cache_hit_rate: float
    spend_eur: float
    spend_eur_per_pass: tuple[float, ...]
    spearman: float | None  # between pass 0 and pass 1, over candidates scored in both


def scores_table(records: Iterable[ScoreRecord], passes: int) -> pa.Table:
    """One row per candidate, in first-seen order.

    `factors` holds the VLM's tags that at least half of the candidate's scoring passes named
    (one pass is enough with two; a tag one of three passes named is sampling noise), sorted;
    it is null when no pass produced a score, so "named nothing" ([]) and "not known" differ.
    """
    by_id: dict[str, dict[int, ScoreRecord]] = defaultdict(dict)
    for record in records:
        by_id[record.id][record.pass_index] = record
    columns: dict[str, list] = defaultdict(list)
    for candidate_id, per_pass in by_id.items():
        values = [per_pass[p].difficulty for p in range(passes) if p in per_pass and per_pass[p].difficulty is not None]
        columns["id"].append(candidate_id)
        columns["difficulty"].append(float(np.mean(values)) if values else None)
        columns["factors"].append(_agreed_factors([r for r in per_pass.values() if r.difficulty is not None]))
        for p in range(passes):
            record = per_pass.get(p)
            columns[f"pass_{p}"].append(record.difficulty if record else None)
            columns[f"status_{p}"].append(record.status if record else "missing")
        columns["cached_passes"].append(sum(r.status == "cached" for r in per_pass.values()))
        columns["cost_eur"].append(sum(r.cost_eur for r in per_pass.values()))
        columns["model"].append(next((r.model for r in per_pass.values() if r.model), None))
        columns["latency_s"].append(max((r.latency_s for r in per_pass.values()), default=0.0))
        columns["reason"].append("; ".join(sorted({r.reason for r in per_pass.values() if r.reason})))
    schema = [
        ("id", pa.string()),
        ("difficulty", pa.float64()),
        *[(f"pass_{p}", pa.float64()) for p in range(passes)],
        *[(f"status_{p}", pa.string()) for p in range(passes)],
        ("cached_passes", pa.int32()),
        ("cost_eur", pa.float64()),
        ("model", pa.string()),
        ("latency_s", pa.float64()),
        ("reason", pa.string()),
        ("factors", pa.list_(pa.string())),
    ]
    return pa.table({name: pa.array(columns[name], type=kind) for name, kind in schema})


def _agreed_factors(scored: Sequence[ScoreRecord]) -> list[str] | None:
    if not scored:
        return None
    named = Counter(tag for record in scored for tag in set(record.factors))
    return sorted(tag for tag, n in named.items() if 2 * n >= len(scored))


def summarize(records: Sequence[ScoreRecord], passes: int) -> ScoringSummary:
    table = scores_table(records, passes)
    difficulty = table.column("difficulty").to_pylist()
    statuses = [r.status for r in records]
    calls = statuses.count("scored") + sum(1 for r in records if r.status == "failed" and r.cost_eur > 0)
    hits = statuses.count("cached")
    looked_up = hits + sum(s in {"scored", "failed"} for s in statuses)
    spend = [sum(r.cost_eur for r in records if r.pass_index == p) for p in range(passes)]
    spearman = None
    if passes >= 2:
        pairs = [
            (a, b)
            for a, b in zip(table.column("pass_0").to_pylist(), table.column("pass_1").to_pylist(), strict=True)
            if a is not None and b is not None
        ]
        if len(pairs) >= 3:
            rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
            spearman = None if math.isnan(rho) else float(rho)
    return ScoringSummary(
        candidates=table.num_rows,
        scored=sum(d is not None for d in difficulty),
        failed=sum(
            1
            for d, r in zip(difficulty, table.column("reason").to_pylist(), strict=True)
            if d is None and r != "budget exhausted"
        ),
        unscored=sum(1 for r in table.column("reason").to_pylist() if r == "budget exhausted"),
        calls=calls,
        cache_hits=hits,
        cache_hit_rate=hits / looked_up if looked_up else 0.0,
        spend_eur=sum(spend),
        spend_eur_per_pass=tuple(spend),
        spearman=spearman,
    )


@dataclass(frozen=True)
class CostForecast:
    candidates: int
    passes: int
    expected_hit_rate: float
    eur_per_call: float

    @property
    def calls(self) -> int:
        return math.ceil(self.candidates * self.passes * (1 - self.expected_hit_rate))

    @property
    def eur(self) -> float:
        return self.calls * self.eur_per_call

    def describe(self) -> str:
        return (
            f"cost forecast: {self.candidates} candidates × {self.passes} passes × "
            f"(1 − {self.expected_hit_rate:.0%} expected cache hits) = {self.calls} calls "
            f"× ≤ €{self.eur_per_call:.6f} = ≤ €{self.eur:.4f}"
        )
