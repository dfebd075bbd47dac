"""The selection as a run records it: the selection.parquet table and what the set looks like."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tasks.selection.strategies import Selection


@dataclass(frozen=True)
class SelectionOutcome:
    """The chosen set, its artefact table (rank, id, reason, stratum, grouping, difficulty) and its
    mean difficulty against the pool's (None when nothing was scored); `grouping` says whether
    its strata came from the condition column or the VLM's factor tags."""

    selection: Selection
    table: pa.Table
    mean_difficulty_selected: float | None
    mean_difficulty_pool: float | None

    @property
    def grouping(self) -> str:
        """What the strata were made of: "condition", "factors" (the VLM's tags), "class_hint" or "none"."""
        return self.selection.grouping

    def metrics(self) -> dict[str, float | None]:
        """`selection.k`, mean difficulties and the count per stratum, for MLflow: `selection.count.<stratum>`
        for condition strata, `selection.count.<grouping>.<stratum>` for any other grouping (a factor
        stratum named low_light is not the low_light condition)."""
        metrics: dict[str, float | None] = {
            "selection.k": self.selection.k,
            "selection.mean_difficulty": self.mean_difficulty_selected,
            "pool.mean_difficulty": self.mean_difficulty_pool,
        }
        prefix = "selection.count." if self.grouping == "condition" else f"selection.count.{self.grouping}."
        return metrics | {f"{prefix}{s}": n for s, n in self.selection.stratum_counts().items()}


def describe_selection(selection: Selection, scores: pa.Table) -> SelectionOutcome:
    """Join each selected id's mean difficulty from `scores` (id, difficulty) into the selection table."""
    difficulty = dict(zip(scores.column("id").to_pylist(), scores.column("difficulty").to_pylist(), strict=True))
    table = selection.to_table().append_column("difficulty", [[difficulty.get(i) for i in selection.ids]])
    return SelectionOutcome(
        selection=selection,
        table=table,
        mean_difficulty_selected=pc.mean(table.column("difficulty")).as_py(),
        mean_difficulty_pool=pc.mean(scores.column("difficulty")).as_py(),
    )
