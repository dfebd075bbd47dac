"""What selection reads: each candidate's id, difficulty, tags, VLM factors and place in the
pool, from the scores table; and the strata the pool falls into."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from tasks.config import Grouping
from tasks.errors import SelectionError
from tasks.selection.grouping import UNKNOWN_STRATUM, factor_rarity, factor_stratum

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PoolItem:
    """One candidate as selection sees it.

    `difficulty` is None when no scoring pass produced one; `factors` are the VLM's tags (None:
    not scored, or scores without tags); `position` is the candidate's place in the ingest
    stream (0 first), None when the caller gives the items in pool order instead.
    """

    id: str
    difficulty: float | None = None
    condition: str | None = None
    class_hint: str | None = None
    factors: tuple[str, ...] | None = None
    position: int | None = None

    @property
    def stratum(self) -> str:
        """The stratum under condition grouping: the condition, else the class hint, else "unknown"."""
        # The condition tag (fog, night, …) is what shifts activations; the class hint is the
        # next best proxy; untagged candidates form one stratum so they are still sampled.
        return self.condition or self.class_hint or UNKNOWN_STRATUM

    @property
    def scored(self) -> bool:
        return self.difficulty is not None and not math.isnan(self.difficulty)


@dataclass(frozen=True)
class SelectionInput:
    """The candidate pool with scores: one item per candidate, ids unique."""

    items: tuple[PoolItem, ...]

    def __post_init__(self) -> None:
        counts = Counter(item.id for item in self.items)
        duplicates = sorted(candidate_id for candidate_id, n in counts.items() if n > 1)
        if duplicates:
            raise SelectionError(
                f"{len(duplicates)} candidate id(s) appear more than once (e.g. {duplicates[:3]}): "
                "ids must be unique in the pool; deduplicate it before selection"
            )

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_table(cls, table: pa.Table) -> SelectionInput:
        """A table with `id` and `difficulty`, and optionally `condition`, `class_hint`, `factors`
        (list of tags) and `position`; without `position`, the table's row order is the pool
        order (scores.parquet is written in ingest order)."""
        missing = [name for name in ("id", "difficulty") if name not in table.column_names]
        if missing:
            raise SelectionError(f"selection input lacks column(s) {missing}: pass the scores table joined with tags")
        rows = table.to_pydict()
        untagged = [None] * table.num_rows
        columns = (
            rows["id"],
            rows["difficulty"],
            rows.get("condition", untagged),
            rows.get("class_hint", untagged),
            [None if f is None else tuple(f) for f in rows.get("factors", untagged)],
            rows.get("position", range(table.num_rows)),
        )
        return cls(tuple(PoolItem(str(i), d, c, h, f, p) for i, d, c, h, f, p in zip(*columns, strict=True)))

    def in_pool_order(self) -> list[PoolItem]:
        """The items in the order the pool was ingested: by `position`, or as given when no item has one.

        Raises SelectionError when only some items carry a position, or two share one: the
        pool order would then be a guess.
        """
        positions = [item.position for item in self.items]
        if all(p is None for p in positions):
            return list(self.items)
        if any(p is None for p in positions):
            raise SelectionError(
                f"{positions.count(None)} of {len(positions)} candidates have no pool position: give every "
                "candidate its place in the ingest stream (the scores table's `position` column) or none"
            )
        if len(set(positions)) != len(positions):
            raise SelectionError(
                "two candidates share a pool position: positions must be each candidate's own place in the "
                "ingest stream; rescore the pool to rebuild the scores table"
            )
        return sorted(self.items, key=lambda item: item.position)

    def strata(self, grouping: Grouping) -> Strata:
        """Each candidate's stratum under `grouping`, and what the strata were made of.

        - condition: the condition, else the class hint, else "unknown"; needs ≥ 1 condition.
        - factors: the rarest of the VLM's factor tags (`tasks.selection.grouping`); needs ≥ 1
          candidate with factors.
        - auto: condition when any candidate has one; else factors when any has them; else the
          class hint, then "unknown" (the grouping is then "class_hint" or "none").

        Raises SelectionError when the grouping asked for has nothing to group by.
        """
        has_condition = any(item.condition for item in self.items)
        has_factors = any(item.factors is not None for item in self.items)
        if grouping == "condition" and not has_condition:
            raise SelectionError(
                "selection.grouping is 'condition' but no candidate has a condition tag: use 'factors' (the "
                "VLM's tags) or 'auto', or add a condition column to the pool"
            )
        if grouping == "factors" and not has_factors:
            raise SelectionError(
                "selection.grouping is 'factors' but no candidate has VLM factor tags (the scores table lacks a "
                "'factors' column, or nothing was scored): rescore the pool, or use 'condition' or 'auto'"
            )
        if grouping == "factors" or (grouping == "auto" and not has_condition and has_factors):
            rarity = factor_rarity(item.factors for item in self.items)
            return Strata("factors", {item.id: factor_stratum(item.factors, rarity) for item in self.items})
        used = "condition" if has_condition else "class_hint" if any(i.class_hint for i in self.items) else "none"
        return Strata(used, {item.id: item.stratum for item in self.items})


@dataclass(frozen=True)
class Strata:
    """Each candidate's stratum (`of`: id → stratum) and what they were made of (`grouping`:
    "condition", "factors", "class_hint" or "none")."""

    grouping: str
    of: dict[str, str]
