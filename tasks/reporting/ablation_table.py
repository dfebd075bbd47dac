"""The ablation table: per (K, strategy, estimator), the INT8−FP16 gap over seeds."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    k: int
    strategy: str
    estimator: str
    seed: int
    gap: float
    int8_map: float
    per_condition_gap: dict[str, float]


@dataclass(frozen=True)
class TableRow:
    k: int
    strategy: str
    estimator: str
    seeds: int
    gap_mean: float
    gap_std: float
    int8_map_mean: float
    per_condition_gap: dict[str, float]  # mean over seeds

    def as_record(self) -> dict[str, object]:
        """The row's key figures, rounded to 4 decimals, for a Prefect table artifact."""
        return {
            "k": self.k,
            "strategy": self.strategy,
            "estimator": self.estimator,
            "seeds": self.seeds,
            "gap_mean": round(self.gap_mean, 4),
            "gap_std": round(self.gap_std, 4),
        }


def summarize_cells(cells: list[Cell]) -> list[TableRow]:
    """Group cells by (K, strategy, estimator); mean ± sample std of the gap over seeds."""
    groups: dict[tuple[int, str, str], list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.k, cell.strategy, cell.estimator)].append(cell)
    rows = []
    for (k, strategy, estimator), members in sorted(groups.items()):
        gaps = [c.gap for c in members]
        conditions = sorted({name for c in members for name in c.per_condition_gap})
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
            )
        )
    return rows


def render_table(rows: list[TableRow], fp16_map: float) -> str:
    """Markdown: one line per (K, strategy, estimator), gaps in mAP points (positive = INT8 worse)."""
    conditions = sorted({name for row in rows for name in row.per_condition_gap})
    header = ["K", "strategy", "estimator", "seeds", "gap mean ± std", "INT8 mAP", *conditions]
    lines = [
        f"FP16 mAP@[.5:.95] = {fp16_map:.4f}. Gap = FP16 − INT8 (positive: INT8 worse).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|",
    ]
    for row in rows:
        cells = [
            str(row.k),
            row.strategy,
            row.estimator,
            str(row.seeds),
            # One seed has no spread to report: "± 0.0000" would claim a certainty it lacks.
            f"{row.gap_mean:+.4f} ± {row.gap_std:.4f}" if row.seeds > 1 else f"{row.gap_mean:+.4f} ± n/a",
            f"{row.int8_map_mean:.4f}",
            *[f"{row.per_condition_gap.get(name, float('nan')):+.4f}" for name in conditions],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
