"""Scenario 5, selection side: K larger than the pool, duplicate ids and NaN scores are clear
errors or never chosen, not a silently short or wrong calibration set."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.config import SelectionConfig
from tasks.errors import SelectionError
from tasks.selection import SelectionInput, select_calibration_set

pytestmark = pytest.mark.reliability


def _selection_pool(n: int, difficulties=None) -> SelectionInput:
    table = pa.table(
        {
            "id": [f"c{i:03d}" for i in range(n)],
            "difficulty": difficulties if difficulties is not None else [i / n for i in range(n)],
            "condition": ["normal" if i % 3 else "low_light" for i in range(n)],
        }
    )
    return SelectionInput.from_table(table)


@pytest.mark.parametrize("strategy", ["first_n", "topk", "random", "stratified", "hard_tail_mix"])
def test_k_larger_than_the_pool_is_a_clear_error(strategy):
    # given a pool of 10 scored candidates, when K=11 is asked for, then the error names K and the pool size
    with pytest.raises(SelectionError) as error:
        select_calibration_set(_selection_pool(10), SelectionConfig(strategy=strategy, k=11, seed=0))
    assert "selection.k=11" in str(error.value) and "10" in str(error.value), f"unclear: {error.value}"


def test_duplicate_ids_and_nan_scores_at_selection():
    # given a scores table with a duplicate id, and one with NaN and missing difficulties
    with pytest.raises(SelectionError, match="more than once"):
        SelectionInput.from_table(pa.table({"id": ["a", "b", "a"], "difficulty": [0.1, 0.2, 0.3]}))
    nan_pool = _selection_pool(10, [float("nan"), None, *[0.1 * i for i in range(8)]])
    # when the hardest are picked, then NaN and missing scores are never chosen and not counted as scored
    picked = select_calibration_set(nan_pool, SelectionConfig(strategy="topk", k=8, seed=0)).ids
    assert {"c000", "c001"}.isdisjoint(picked) and len(picked) == 8, f"NaN/None never picked: {picked}"
    with pytest.raises(SelectionError, match="only 8 candidate"):
        select_calibration_set(nan_pool, SelectionConfig(strategy="topk", k=9, seed=0))
