"""Calibration-set selection: deterministic, exactly K distinct ids, and each strategy keeps its promise."""

import itertools

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from tasks.calibration.profiles import ActivationProfiles
from tasks.config import SelectionConfig
from tasks.errors import SelectionError
from tasks.selection import (
    STRATEGIES,
    PoolItem,
    SelectionInput,
    allocate,
    check_k_fits,
    layer_targets,
    range_coverage,
    range_widths,
    select_calibration_set,
)

pytestmark = pytest.mark.unit

# A long-tailed condition mix: the rare conditions are the tail a calibration set must keep.
MIX = {"clear": 140, "rain": 40, "fog": 14, "night": 6}
UNSCORED = 10
N_LAYERS = 6


def make_pool(seed: int = 0) -> SelectionInput:
    rng = np.random.default_rng(seed)
    conditions = [c for c, n in MIX.items() for _ in range(n)]
    difficulty = rng.uniform(0, 1, len(conditions)).round(3)  # rounding makes ties, broken by id
    positions = rng.permutation(len(conditions))  # the ingest order, unrelated to the ids' order
    items = [
        PoolItem(
            f"c{i:04d}", None if i % (len(conditions) // UNSCORED) == 0 else float(d), condition, "car", None, int(p)
        )
        for i, (d, condition, p) in enumerate(zip(difficulty, conditions, positions, strict=True))
    ]
    return SelectionInput(tuple(items))


def make_profiles(pool: SelectionInput, seed: int = 0) -> tuple[ActivationProfiles, dict[str, str]]:
    """Typical images span ~[-1, 1] per layer; two per (layer, side) reach ±5; one lone outlier reaches −50."""
    rng = np.random.default_rng(seed)
    ids = [item.id for item in pool.items]
    values = np.stack([rng.uniform(-1, -0.5, (len(ids), N_LAYERS)), rng.uniform(0.5, 1, (len(ids), N_LAYERS))], -1)
    holders: dict[str, str] = {}
    slots = iter(rng.permutation(len(ids)))
    for layer in range(N_LAYERS):
        for side, extremes in ((0, (-5.0, -4.9)), (1, (5.0, 4.9))):
            for value in extremes:
                row = int(next(slots))
                values[row, layer, side] = value
                holders[ids[row]] = f"layer{layer}/{'min' if side == 0 else 'max'}"
    outlier = int(next(slots))
    values[outlier, 0, 0] = -50.0
    holders[ids[outlier]] = "outlier"
    names = tuple(f"conv{i}" for i in range(N_LAYERS))
    return ActivationProfiles(names, values.astype(np.float32), tuple(ids)), holders


@pytest.fixture(scope="module")
def pool():
    return make_pool()


@pytest.fixture(scope="module")
def profiles(pool):
    return make_profiles(pool)[0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_deterministic_and_returns_k_distinct_ids(strategy, pool, profiles):
    # given the same pool, K and seed, when selected twice and from a shuffled copy of the pool
    k = 25
    first = select_calibration_set(pool, SelectionConfig(strategy=strategy, k=k, seed=3), profiles)
    again = select_calibration_set(pool, SelectionConfig(strategy=strategy, k=k, seed=3), profiles)
    order = np.random.default_rng(9).permutation(len(pool))
    shuffled = SelectionInput(tuple(pool.items[i] for i in order))
    reordered = select_calibration_set(shuffled, SelectionConfig(strategy=strategy, k=k, seed=3), profiles)
    # then the ids are the same, in the same order, K of them and all distinct
    assert first.ids == again.ids, f"{strategy}: same inputs and seed must give the same ids"
    assert first.ids == reordered.ids, f"{strategy}: the pool's row order must not matter"
    assert len(first.ids) == k == len(set(first.ids)), f"{strategy}: expected {k} distinct ids, got {first.ids}"
    assert len(first.reasons) == len(first.strata) == k, f"{strategy}: one reason and stratum per id"
    assert first.to_table().column("id").to_pylist() == list(first.ids), "the artefact keeps the feeding order"


@pytest.mark.parametrize("strategy", ["random", "stratified"])
def test_a_different_seed_changes_the_sample(strategy, pool):
    a = select_calibration_set(pool, SelectionConfig(strategy=strategy, k=25, seed=0))
    b = select_calibration_set(pool, SelectionConfig(strategy=strategy, k=25, seed=1))
    assert set(a.ids) != set(b.ids), f"{strategy}: seeds 0 and 1 should draw different sets"


def test_the_seed_reaches_hard_tail_mix_and_coverage_only_through_their_stratified_fill(pool, profiles):
    # given hard_tail_mix at a small K (half hard, half a seeded stratified fill), seeds 0 and 1
    mix = [select_calibration_set(pool, SelectionConfig(strategy="hard_tail_mix", k=16, seed=s)) for s in (0, 1)]
    # then the hard half is the same and the fill differs: the seed reaches the strategy
    assert mix[0].ids[:8] == mix[1].ids[:8], "the hardest 8 do not depend on the seed"
    assert set(mix[0].ids[8:]) != set(mix[1].ids[8:]), "the stratified fill is drawn with the seed"
    # and coverage is deterministic when its greedy picks fill K (12+ picks here), seeded only past them
    cover = {
        s: select_calibration_set(pool, SelectionConfig(strategy="coverage", k=10, seed=s), profiles) for s in (0, 1, 2)
    }
    assert set(cover[0].reasons) == {"coverage"}, f"K=10 is all greedy picks: {cover[0].reasons}"
    assert cover[0].ids == cover[1].ids == cover[2].ids, "no draw, so every seed selects the same images"
    wide = [select_calibration_set(pool, SelectionConfig(strategy="coverage", k=40, seed=s), profiles) for s in (0, 1)]
    assert set(wide[0].ids) != set(wide[1].ids), "past the greedy picks, the seeded fill differs"


def test_k_beyond_the_eligible_candidates_fails_naming_k_count_and_fix(pool):
    scored = sum(item.scored for item in pool.items)
    with pytest.raises(SelectionError, match=rf"selection.k={scored + 1} .* only {scored} .*lower selection.k"):
        select_calibration_set(pool, SelectionConfig(strategy="topk", k=scored + 1, seed=0))
    with pytest.raises(SelectionError, match=rf"only {len(pool)} candidate"):
        select_calibration_set(pool, SelectionConfig(strategy="random", k=len(pool) + 1, seed=0))
    # k=0 and an unknown strategy are refused by SelectionConfig at load; the stage checks them again
    # for configs built without validation (model_construct)
    with pytest.raises(ValidationError, match="k"):
        SelectionConfig(strategy="stratified", k=0, seed=0)
    with pytest.raises(SelectionError, match="must be ≥ 1"):
        select_calibration_set(pool, SelectionConfig.model_construct(strategy="stratified", k=0, seed=0))
    with pytest.raises(ValidationError, match="strategy"):
        SelectionConfig(strategy="last_n", k=5, seed=0)
    with pytest.raises(SelectionError, match="unknown selection strategy"):
        select_calibration_set(pool, SelectionConfig.model_construct(strategy="last_n", k=5, seed=0))


def test_unscored_candidates_are_left_to_the_strategies_that_ignore_difficulty(pool):
    # given a pool where some candidates have no difficulty
    unscored = {item.id for item in pool.items if not item.scored}
    assert len(unscored) == UNSCORED, f"fixture should hold {UNSCORED} unscored candidates"
    # when topk takes every scored one and random takes the whole pool
    everything_scored = select_calibration_set(pool, SelectionConfig(strategy="topk", k=len(pool) - UNSCORED, seed=0))
    everything = select_calibration_set(pool, SelectionConfig(strategy="random", k=len(pool), seed=0))
    # then topk never picks an unscored candidate, and random can
    assert not unscored & set(everything_scored.ids), "topk must skip candidates without a difficulty"
    assert unscored <= set(everything.ids), "random treats unscored candidates as eligible"


def test_topk_returns_the_hardest_with_ties_broken_by_id(pool):
    k = 30
    chosen = select_calibration_set(pool, SelectionConfig(strategy="topk", k=k, seed=0))
    ranked = sorted((item for item in pool.items if item.scored), key=lambda item: (-item.difficulty, item.id))
    assert chosen.ids == tuple(item.id for item in ranked[:k]), "topk should be the K hardest, hardest first"
    assert set(chosen.reasons) == {"hard"}, f"every topk pick is 'hard', got {set(chosen.reasons)}"


def test_allocation_is_largest_remainder_with_one_per_stratum():
    # 10 over 70/20/7/3: quotas 7, 2, 0.7, 0.3 → 7, 2, 1, 0; the tail stratum then takes one from "a"
    assert allocate({"a": 70, "b": 20, "c": 7, "d": 3}, 10) == {"a": 6, "b": 2, "c": 1, "d": 1}, "Hamilton + min 1"
    assert allocate({"a": 70, "b": 20, "c": 7, "d": 3}, 3) == {"a": 2, "b": 1, "c": 0, "d": 0}, "K < strata: no min"
    assert allocate({"x": 1, "y": 1}, 1) == {"x": 1, "y": 0}, "equal remainders go to the first name"


def test_stratified_keeps_the_long_tail_in_proportion(pool):
    # given a 140/40/14/6 condition mix, when 25 are selected stratified
    chosen = select_calibration_set(pool, SelectionConfig(strategy="stratified", k=25, seed=0))
    # then the counts are the largest-remainder allocation and the 3 % "night" tail is present
    expected = allocate(dict(MIX), 25)
    assert chosen.stratum_counts() == dict(sorted(expected.items())), f"counts {chosen.stratum_counts()} ≠ {expected}"
    assert chosen.stratum_counts()["night"] >= 1, "the rarest condition must be represented"
    # and every prefix is close to proportional too (NNCF may be fed a prefix)
    for m in range(1, 26):
        for stratum, share in expected.items():
            drift = abs(chosen.strata[:m].count(stratum) - m * share / 25)
            assert drift <= 1.0, f"prefix {m}: {stratum} is {drift:.2f} off its share {share}/25"


def test_stratum_falls_back_to_class_hint_then_unknown():
    pool = SelectionInput((PoolItem("a", 0.1, "fog", "car"), PoolItem("b", 0.2, None, "bus"), PoolItem("c")))
    chosen = select_calibration_set(pool, SelectionConfig(strategy="stratified", k=3, seed=0))
    assert sorted(chosen.strata) == ["bus", "fog", "unknown"], f"fallback strata wrong: {chosen.strata}"


def test_hard_tail_mix_leads_with_the_hard_tail(pool):
    # given α = 0.5 and K = 25, the hard part is round(12.5) = 13 (half up)
    k, alpha = 25, 0.5
    chosen = select_calibration_set(pool, SelectionConfig(strategy="hard_tail_mix", k=k, seed=0, hard_fraction=alpha))
    hardest = select_calibration_set(pool, SelectionConfig(strategy="topk", k=k, seed=0)).ids
    n_hard = 13
    assert chosen.ids[:n_hard] == hardest[:n_hard], "the first round(α·K) ids should be the hardest, in order"
    assert chosen.reasons.count("hard") == n_hard, f"expected {n_hard} hard picks, got {chosen.reasons.count('hard')}"
    assert set(chosen.reasons[n_hard:]) == {"stratified"}, "the rest is stratified"
    assert "night" in chosen.strata[n_hard:], "the stratified part keeps the tail condition"


def test_hard_tail_mix_needs_enough_scored_candidates():
    pool = SelectionInput((PoolItem("a", 0.9), PoolItem("b"), PoolItem("c"), PoolItem("d")))
    with pytest.raises(SelectionError, match="hard_fraction"):
        select_calibration_set(pool, SelectionConfig(strategy="hard_tail_mix", k=4, seed=0, hard_fraction=0.5))


def test_coverage_picks_the_extreme_holders_first_and_skips_the_lone_outlier(pool):
    # given profiles where two candidates per layer and side reach ±5 and one lone outlier reaches −50
    profiles, holders = make_profiles(pool)
    # when coverage selects 20
    chosen = select_calibration_set(pool, SelectionConfig(strategy="coverage", k=20, seed=0), profiles)
    greedy = [i for i, reason in zip(chosen.ids, chosen.reasons, strict=True) if reason == "coverage"]
    # then its greedy picks are extreme holders only, one or two per (layer, side), and come first
    assert 2 * N_LAYERS <= len(greedy) <= 4 * N_LAYERS, f"1–2 picks per layer and side expected, got {len(greedy)}"
    assert chosen.ids[: len(greedy)] == tuple(greedy), "coverage picks come first in feeding order"
    picked = [holders.get(i, "typical") for i in greedy]
    every_side = {f"layer{j}/{s}" for j in range(N_LAYERS) for s in ("min", "max")}
    assert set(picked) == every_side, f"greedy should hold every layer's min and max, and only those: {picked}"
    assert set(chosen.reasons[len(greedy) :]) == {"stratified"}, "the rest of K is filled stratified"
    assert chosen.layer_coverage == (1.0,) * N_LAYERS, f"every layer fully covered, got {chosen.layer_coverage}"
    # and with the full range as target (tail_quantile=0) the outlier becomes a target itself
    full = select_calibration_set(
        pool, SelectionConfig(strategy="coverage", k=20, seed=0, coverage_tail_quantile=0.0), profiles
    )
    assert "outlier" in {holders.get(i) for i in full.ids[: 2 * N_LAYERS]}, "tail_quantile=0 chases the outlier"


def test_coverage_covers_more_of_each_layer_than_random(pool):
    profiles, _ = make_profiles(pool)
    targets = layer_targets(profiles.values.astype(np.float64))
    row = {candidate_id: i for i, candidate_id in enumerate(profiles.ids)}

    def covered(ids):
        return range_coverage(profiles.values[[row[i] for i in ids]].astype(np.float64), targets)

    k = 20
    greedy = covered(select_calibration_set(pool, SelectionConfig(strategy="coverage", k=k, seed=0), profiles).ids)
    for seed in range(5):
        baseline = covered(select_calibration_set(pool, SelectionConfig(strategy="random", k=k, seed=seed)).ids)
        assert (greedy >= baseline - 1e-12).all(), f"seed {seed}: coverage {greedy} below random {baseline}"
        assert greedy.mean() > baseline.mean() + 0.05, f"seed {seed}: {greedy.mean():.3f} vs {baseline.mean():.3f}"


def test_coverage_needs_profiles_that_match_the_pool(pool):
    with pytest.raises(SelectionError, match="needs activation profiles"):
        select_calibration_set(pool, SelectionConfig(strategy="coverage", k=5, seed=0))
    with pytest.raises(SelectionError, match="profile rows for"):
        select_calibration_set(pool, SelectionConfig(strategy="coverage", k=5, seed=0), np.zeros((3, 2, 2)))


def test_a_pool_with_a_repeated_id_is_refused():
    with pytest.raises(SelectionError, match="more than once"):
        SelectionInput((PoolItem("a"), PoolItem("a")))


def test_from_table_reads_tags_and_treats_nan_as_unscored():
    table = pa.table({"id": ["a", "b", "c"], "difficulty": [0.3, float("nan"), None], "condition": ["fog", None, None]})
    pool = SelectionInput.from_table(table)
    assert [item.scored for item in pool.items] == [True, False, False], "NaN and null difficulty are unscored"
    assert [item.stratum for item in pool.items] == ["fog", "unknown", "unknown"], "missing tags fall to unknown"
    assert select_calibration_set(pool, SelectionConfig(strategy="topk", k=1, seed=0)).ids == ("a",), (
        "only the scored candidate ranks"
    )


def test_coverage_with_profiles_for_part_of_the_pool_fills_from_the_rest(pool, profiles):
    # given profiles for the first 50 candidates only
    part = ActivationProfiles(profiles.layer_names, profiles.values[:50], profiles.ids[:50])
    chosen = select_calibration_set(pool, SelectionConfig(strategy="coverage", k=30, seed=0), part)
    greedy = {i for i, reason in zip(chosen.ids, chosen.reasons, strict=True) if reason == "coverage"}
    assert greedy <= set(part.ids), "greedy picks come from profiled candidates only"
    assert len(set(chosen.ids)) == 30, "the fill draws from the whole remaining pool"


def _layered_profiles(ids, low, high) -> ActivationProfiles:
    """Profiles [n, 2 layers, 2]: layer 0 spans [low, high] per image, layer 1 is the same
    image scaled ×100 (a layer with larger activations), so the ranking is read in layer
    units and not in raw values."""
    values = np.stack([np.stack([low, high], -1), np.stack([100 * low, 100 * high], -1)], 1)
    return ActivationProfiles(("conv0", "conv1"), values.astype(np.float32), tuple(ids))


def test_widest_ranges_takes_the_images_whose_ranges_reach_furthest_widest_first_ties_by_id():
    # given 8 candidates in pool order whose ranges widen with their number, and "c7" tied with "c6"
    ids = [f"c{i}" for i in range(8)]
    pool = SelectionInput(tuple(PoolItem(i, position=n) for n, i in enumerate(ids)))
    half = np.array([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 2.0, 2.0])
    profiles = _layered_profiles(ids, -half, half)
    # when widest_ranges takes 3, with any seed
    chosen = [
        select_calibration_set(pool, SelectionConfig(strategy="widest_ranges", k=3, seed=s), profiles) for s in (0, 5)
    ]
    # then the widest come first, the tie by id, and the seed changes nothing
    assert chosen[0].ids == ("c6", "c7", "c5"), chosen[0].ids
    assert chosen[1].ids == chosen[0].ids, "no draw: the seed does not reach widest_ranges"
    assert set(chosen[0].reasons) == {"wide"}
    # and reach on one side is weighed against falling short on the other: "c7" spanning [-1, 3] ties
    # "c6" at [-2, 2] (1.65 past the median max, 0.25 short of the median min), [-1, 3.5] beats it
    for top, first in ((3.0, "c6"), (3.5, "c7")):
        lopsided = _layered_profiles(ids, -np.r_[half[:7], 1.0], np.r_[half[:7], top])
        picked = select_calibration_set(pool, SelectionConfig(strategy="widest_ranges", k=1), lopsided).ids
        assert picked == (first,), f"c7 reaching {top}: {picked}"


def test_range_widths_are_in_units_of_each_layers_pool_range_and_a_flat_layer_counts_zero():
    # given two layers where image 1 reaches 1 pool-range unit past the median image on layer 0 only,
    # and a third layer that never varies (a constant activation)
    values = np.zeros((3, 3, 2))
    values[:, 0] = [[-1, 1], [-1, 2], [-1, 1]]
    values[:, 1] = [[-500, 500], [-500, 500], [-500, 500]]
    values[:, 2] = [[0, 0], [0, 0], [0, 0]]
    widths = range_widths(values)
    # then image 1's width is its reach on layer 0 (1 of a 2.98 range) averaged over 3 layers; the others 0
    span = np.quantile([1, 2, 1], 0.99) - (-1)
    np.testing.assert_allclose(widths, [0.0, 1 / span / 3, 0.0], atol=1e-12)


def test_widest_ranges_needs_profiles_and_enough_profiled_candidates(pool, profiles):
    with pytest.raises(SelectionError, match="'widest_ranges' needs activation profiles"):
        select_calibration_set(pool, SelectionConfig(strategy="widest_ranges", k=5))
    # given profiles for 50 candidates only: those 50 are all it can rank
    part = ActivationProfiles(profiles.layer_names, profiles.values[:50], profiles.ids[:50])
    assert set(select_calibration_set(pool, SelectionConfig(strategy="widest_ranges", k=50), part).ids) == set(part.ids)
    with pytest.raises(SelectionError, match=r"selection.k=51 .* only 50 .*with an activation profile.*profile more"):
        select_calibration_set(pool, SelectionConfig(strategy="widest_ranges", k=51), part)


def test_check_k_fits_refuses_a_k_the_pool_cannot_fill():
    check_k_fits(30, 30, "s3://pool/")  # exactly full is fine
    with pytest.raises(SelectionError, match=r"selection.k=31 but pool s3://pool/ holds 30 candidate"):
        check_k_fits(31, 30, "s3://pool/")


@pytest.mark.parametrize("strategy", ["widest_ranges", "coverage"])
def test_profiles_as_an_array_follow_the_pool_order_not_the_row_order_items_come_in(strategy):
    # given profiles as a plain array in ingest order (a, b, c; c reaches furthest) and the pool's
    # items handed over in another order, each with its place in the ingest stream
    values = np.array([[[-1, 1]], [[-1.1, 1.1]], [[-9, 9]]], np.float32)
    pool = SelectionInput((PoolItem("c", position=2), PoolItem("a", position=0), PoolItem("b", position=1)))
    # when one image is selected, then it is the one the same profiles named by id give: c for
    # widest_ranges; b for coverage, whose target leaves out the lone outlier c
    chosen = select_calibration_set(pool, SelectionConfig(strategy=strategy, k=1), values).ids
    named = ActivationProfiles(("conv0",), values, ("a", "b", "c"))
    assert chosen == select_calibration_set(pool, SelectionConfig(strategy=strategy, k=1), named).ids
    assert chosen == {"widest_ranges": ("c",), "coverage": ("b",)}[strategy], chosen


@pytest.mark.parametrize(
    ("values", "ids", "message"),
    [
        (np.array([[[1, -1]], [[9, -9]]], np.float32), ("a", "b"), "minimum above its maximum"),
        (np.array([[[-1, 1]], [[-1, 3]]], np.float32).reshape(2, 1, 2)[:, :0], ("a", "b"), "n_layers ≥ 1"),
        (np.array([[[-9, 9]], [[-1, 1]], [[-1, 1]]], np.float32), ("a", "b", "a"), r"more than once .*'a'"),
    ],
    ids=["min-max-swapped", "no-layers", "repeated-id"],
)
def test_profiles_that_cannot_be_right_are_refused_naming_what_is_wrong(values, ids, message):
    pool = SelectionInput((PoolItem("a", position=0), PoolItem("b", position=1)))
    profiles = ActivationProfiles(tuple(f"conv{i}" for i in range(values.shape[1])), values, ids)
    for strategy in ("widest_ranges", "coverage"):
        with pytest.raises(SelectionError, match=message):
            select_calibration_set(pool, SelectionConfig(strategy=strategy, k=1), profiles)


def test_widest_ranges_does_not_depend_on_the_scale_of_activations_or_on_rounding():
    ids = [f"c{i}" for i in range(4)]
    pool = SelectionInput(tuple(PoolItem(i, position=n) for n, i in enumerate(ids)))
    half = np.array([1.0, 1.2, 2.0, 1.5])
    # given the same profiles at 1e-14 of their size (a layer of tiny activations is not a flat one)
    for scale in (1.0, 1e-16):
        scaled = _layered_profiles(ids, -half * scale, half * scale)
        assert select_calibration_set(pool, SelectionConfig(strategy="widest_ranges", k=2), scaled).ids == (
            "c2",
            "c3",
        ), f"scale {scale}"
    # and images whose three layers hold the same numbers in every order, in a pool made of such
    # groups (so every layer has the same pool statistics), tie exactly: their computed widths
    # differ only in the last bits, and within a group the picks must go by id
    rng = np.random.default_rng(3)
    rows, perm_ids = [], []
    for group in range(6):
        base = np.stack([-rng.uniform(0.1, 3, 3), rng.uniform(0.1, 3, 3)], -1)
        for member, order in zip(rng.permutation(6), itertools.permutations(range(3)), strict=True):
            rows.append(base[list(order)])
            perm_ids.append(f"g{group}m{member}")
    perm_pool = SelectionInput(tuple(PoolItem(i, position=n) for n, i in enumerate(perm_ids)))
    profiles = ActivationProfiles(("l0", "l1", "l2"), np.array(rows), tuple(perm_ids))
    chosen = select_calibration_set(perm_pool, SelectionConfig(strategy="widest_ranges", k=9), profiles).ids
    for group in range(6):
        members = sorted(i for i in chosen if i.startswith(f"g{group}m"))
        assert members == [f"g{group}m{m}" for m in range(len(members))], f"group {group}: {members} of {chosen}"
