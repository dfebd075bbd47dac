"""Stratified selection on a pool without condition labels: strata from the VLM's factor tags."""

import pyarrow as pa
import pytest

from tasks.config import SelectionConfig
from tasks.errors import SelectionError
from tasks.selection import (
    NO_FACTOR,
    UNKNOWN_STRATUM,
    SelectionInput,
    allocate,
    describe_selection,
    factor_rarity,
    factor_stratum,
    select_calibration_set,
)

pytestmark = pytest.mark.unit

# (factor tags the VLM returned, how many images, the stratum each should land in)
REPLIES = [
    ([], 100, NO_FACTOR),
    (["motion_blur"], 30, "motion_blur"),
    (["low_contrast"], 20, "low_contrast"),
    (["sensor_noise", "clutter"], 15, "sensor_noise"),  # clutter is named 25 times, sensor_noise 15
    (["clutter"], 10, "clutter"),
    (["low_light", "low_contrast"], 8, "low_light"),  # low_contrast is named 28 times: low_light is the tail
    (["overexposure"], 5, "overexposure"),
    (None, 4, UNKNOWN_STRATUM),  # no reply, so no tags
]


def _scores(with_condition: bool = False) -> pa.Table:
    """A scores table as scoring writes it: id, difficulty, factors (list or null), no condition column."""
    rows = [(tags, stratum) for tags, n, stratum in REPLIES for _ in range(n)]
    columns = {
        "id": [f"x{(i * 37) % len(rows):04d}" for i in range(len(rows))],
        "difficulty": [None if tags is None else 0.2 + 0.1 * len(tags) for tags, _ in rows],
        "factors": pa.array([tags for tags, _ in rows], pa.list_(pa.string())),
    }
    if with_condition:
        columns["condition"] = ["normal"] * len(rows)
    return pa.table(columns)


def _expected_sizes() -> dict[str, int]:
    return {stratum: n for _, n, stratum in REPLIES}


def test_each_image_counts_in_its_rarest_factor():
    rarity = factor_rarity([["a", "b"], ["b"], ["b", "c"], ["c"], []])
    assert factor_stratum(("a", "b"), rarity) == "a", "a (1) is rarer than b (3)"
    assert factor_stratum(("b", "c"), rarity) == "c", "c (2) is rarer than b (3)"
    assert factor_stratum(("c", "a", "c"), rarity) == "a", "a tag repeated in one reply counts once"
    assert factor_stratum((), rarity) == NO_FACTOR, "a reply naming no factor"
    assert factor_stratum(None, rarity) == UNKNOWN_STRATUM, "no reply at all"
    assert factor_stratum(("b", "new"), rarity) == "new", "a tag the counts never saw is the rarest"
    tied = factor_rarity([["x"], ["y"]])
    assert factor_stratum(("y", "x"), tied) == "x", "equal counts: the name decides"


def test_stratified_without_a_condition_column_groups_by_factor_tags():
    # given a scored pool with factor tags and no condition column
    pool = SelectionInput.from_table(_scores())
    # when 24 images are selected stratified (grouping auto)
    chosen = select_calibration_set(pool, SelectionConfig(strategy="stratified", k=24, seed=0))
    # then the strata are the factor strata, allocated in proportion, the rare low_light tail included
    assert chosen.grouping == "factors", f"auto must fall back to the VLM's factors: {chosen.grouping}"
    expected = allocate(_expected_sizes(), 24)
    assert chosen.stratum_counts() == dict(sorted(expected.items())), f"{chosen.stratum_counts()} ≠ {expected}"
    assert chosen.stratum_counts()["low_light"] >= 1, "the 4 % low_light tail must be represented"
    # and the selection's artefact and metrics say which grouping made the strata
    outcome = describe_selection(chosen, _scores())
    assert outcome.grouping == "factors", "the outcome names the grouping"
    assert set(outcome.table.column("grouping").to_pylist()) == {"factors"}, "selection.parquet names it too"
    assert outcome.metrics()["selection.count.factors.low_light"] == expected["low_light"], (
        f"factor strata are counted under their own names: {sorted(outcome.metrics())}"
    )


def test_grouping_factors_ignores_a_condition_column():
    # given the same pool with a condition column that says nothing (every frame "normal")
    pool = SelectionInput.from_table(_scores(with_condition=True))
    by_condition = select_calibration_set(pool, SelectionConfig(strategy="stratified", k=24, seed=0))
    by_factors = select_calibration_set(pool, SelectionConfig(strategy="stratified", k=24, seed=0, grouping="factors"))
    # then auto uses the column, and factors grouping ignores it, as on a pool without labels
    assert by_condition.grouping == "condition" and set(by_condition.strata) == {"normal"}, by_condition.strata
    assert by_factors.grouping == "factors", by_factors.grouping
    unlabelled = select_calibration_set(
        SelectionInput.from_table(_scores()), SelectionConfig(strategy="stratified", k=24, seed=0)
    )
    assert by_factors.ids == unlabelled.ids, "factors grouping must pick what it picks on an unlabelled pool"


def test_hard_tail_mix_fills_its_stratified_part_by_factor_strata():
    pool = SelectionInput.from_table(_scores())
    chosen = select_calibration_set(pool, SelectionConfig(strategy="hard_tail_mix", k=30, seed=1, hard_fraction=0.5))
    hard = chosen.reasons.count("hard")
    assert hard == 15 and chosen.grouping == "factors", f"15 hard picks, factor strata: {hard}, {chosen.grouping}"
    rest = [s for s, r in zip(chosen.strata, chosen.reasons, strict=True) if r == "stratified"]
    assert NO_FACTOR in rest and "motion_blur" in rest, f"the stratified part spans the factor strata: {rest}"


def test_a_grouping_with_nothing_to_group_by_is_refused():
    with pytest.raises(SelectionError, match="no candidate has a condition tag"):
        select_calibration_set(
            SelectionInput.from_table(_scores()), SelectionConfig(strategy="stratified", k=5, grouping="condition")
        )
    bare = _scores().drop_columns(["factors"])
    with pytest.raises(SelectionError, match="no candidate has VLM factor tags"):
        select_calibration_set(
            SelectionInput.from_table(bare), SelectionConfig(strategy="stratified", k=5, grouping="factors")
        )
