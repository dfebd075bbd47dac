"""first_n, the users' default: the first K candidates in the order the pool was ingested."""

import numpy as np
import pyarrow as pa
import pytest

from tasks.config import SelectionConfig
from tasks.errors import SelectionError
from tasks.selection import PoolItem, SelectionInput, select_calibration_set

pytestmark = pytest.mark.unit

N = 40


def _pool_whose_ids_do_not_sort_in_pool_order() -> tuple[SelectionInput, list[str]]:
    """Ids named by line, as a camera names frames; the lines take turns, so id order ≠ pool order."""
    ids_in_pool_order = [f"line-{i % 4 + 1}-s{i:07d}" for i in range(N)]
    assert sorted(ids_in_pool_order) != ids_in_pool_order, "the fixture must not sort in pool order"
    difficulty = np.random.default_rng(0).uniform(0, 1, N)
    items = [
        PoolItem(i, float(d), None, None, ("low_light",), p)
        for p, (i, d) in enumerate(zip(ids_in_pool_order, difficulty, strict=True))
    ]
    return SelectionInput(tuple(items)), ids_in_pool_order


def test_first_n_takes_the_first_k_by_pool_position_not_by_id_or_row_order():
    # given a pool whose ids sort by line, handed over in a shuffled row order
    pool, in_order = _pool_whose_ids_do_not_sort_in_pool_order()
    shuffled = SelectionInput(tuple(pool.items[i] for i in np.random.default_rng(5).permutation(N)))
    # when first_n takes 10
    chosen = select_calibration_set(shuffled, SelectionConfig(strategy="first_n", k=10, seed=0))
    # then it is the first 10 of the ingest stream, in stream order (NNCF takes them in that order)
    assert chosen.ids == tuple(in_order[:10]), f"first_n must follow the pool position: {chosen.ids}"
    assert set(chosen.reasons) == {"first"}, f"every pick's reason is 'first': {set(chosen.reasons)}"
    # and no seed changes it
    other_seed = select_calibration_set(shuffled, SelectionConfig(strategy="first_n", k=10, seed=7))
    assert other_seed.ids == chosen.ids, "first_n does not draw: the seed must not matter"


def test_first_n_reads_the_scores_tables_position_column_and_else_its_row_order():
    pool, in_order = _pool_whose_ids_do_not_sort_in_pool_order()
    # given the scores table written sorted by id, with the position column
    table = pa.table(
        {
            "id": [item.id for item in pool.items],
            "difficulty": [item.difficulty for item in pool.items],
            "position": [item.position for item in pool.items],
        }
    ).sort_by("id")
    chosen = select_calibration_set(SelectionInput.from_table(table), SelectionConfig(strategy="first_n", k=6))
    assert chosen.ids == tuple(in_order[:6]), f"the position column sets the order, not the rows: {chosen.ids}"
    # given a table without positions (written in ingest order), its rows are the pool order
    bare = SelectionInput.from_table(table.drop_columns(["position"]))
    by_rows = select_calibration_set(bare, SelectionConfig(strategy="first_n", k=6)).ids
    assert by_rows == tuple(table.column("id").to_pylist()[:6]), f"without positions, row order: {by_rows}"


def test_first_n_refuses_an_ambiguous_pool_order():
    # given candidates of which only some carry a position, or two share one, the order would be a guess
    partial = SelectionInput((PoolItem("a", 0.1, position=0), PoolItem("b", 0.2)))
    with pytest.raises(SelectionError, match="no pool position"):
        select_calibration_set(partial, SelectionConfig(strategy="first_n", k=1))
    shared = SelectionInput((PoolItem("a", 0.1, position=3), PoolItem("b", 0.2, position=3)))
    with pytest.raises(SelectionError, match="share a pool position"):
        select_calibration_set(shared, SelectionConfig(strategy="first_n", k=1))


def test_first_n_takes_unscored_candidates_like_nncf_would():
    # given a pool whose first candidate has no difficulty (its scoring failed)
    pool = SelectionInput(
        (PoolItem("z", None, position=0), PoolItem("a", 0.9, position=1), PoolItem("m", 0.1, position=2))
    )
    chosen = select_calibration_set(pool, SelectionConfig(strategy="first_n", k=2))
    # then it is still taken: the baseline stands for calibrating with no scoring at all
    assert chosen.ids == ("z", "a"), f"first_n ignores difficulty: {chosen.ids}"
