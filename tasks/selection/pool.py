"""What selection reads: each candidate's id, difficulty and strata tags, from the scores table."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from tasks.errors import SelectionError

logger = logging.getLogger(__name__)

UNKNOWN_STRATUM = "unknown"


@dataclass(frozen=True, slots=True)
class PoolItem:
    """One candidate as selection sees it; `difficulty` is None when no scoring pass produced one."""

    id: str
    difficulty: float | None = None
    condition: str | None = None
    class_hint: str | None = None

    @property
    def stratum(self) -> str:
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
        """A table with `id` and `difficulty`, and optionally `condition` and `class_hint`."""
        missing = [name for name in ("id", "difficulty") if name not in table.column_names]
        if missing:
            raise SelectionError(f"selection input lacks column(s) {missing}: pass the scores table joined with tags")
        rows = table.to_pydict()
        untagged = [None] * table.num_rows
        columns = (rows["id"], rows["difficulty"], rows.get("condition", untagged), rows.get("class_hint", untagged))
        return cls(tuple(PoolItem(str(i), d, c, h) for i, d, c, h in zip(*columns, strict=True)))
