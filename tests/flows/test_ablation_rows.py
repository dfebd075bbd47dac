"""The ablation's rows: each strategy as configured, plus `<strategy>[factors]` rows that ignore the
condition column, as a real pool without condition labels would make them run."""

import pytest

from flows.ablation import cell_selections, distinct_cells
from tasks.config import SelectionConfig, load_config
from tasks.errors import ConfigError
from tests.support import ROOT

pytestmark = pytest.mark.unit


def test_a_factors_row_runs_its_strategy_grouped_by_factor_tags():
    # given two strategies and one factors row, at two K and two seeds
    selection = SelectionConfig(ablation_factor_rows=["hard_tail_mix"])
    cells = cell_selections(selection, ["first_n", "hard_tail_mix"], seeds=[0, 1], ks=[16, 64])
    # then first_n runs once per K (it draws nothing), the others once per seed, the factors row included
    labels = [(k, label, seed) for k, label, seed in cells]
    assert labels == [
        (16, "first_n", 0),
        (16, "hard_tail_mix", 0),
        (16, "hard_tail_mix", 1),
        (16, "hard_tail_mix[factors]", 0),
        (16, "hard_tail_mix[factors]", 1),
        (64, "first_n", 0),
        (64, "hard_tail_mix", 0),
        (64, "hard_tail_mix", 1),
        (64, "hard_tail_mix[factors]", 0),
        (64, "hard_tail_mix[factors]", 1),
    ], f"cells in running order: {labels}"
    factors = cells[(64, "hard_tail_mix[factors]", 1)]
    plain = cells[(64, "hard_tail_mix", 1)]
    assert (factors.strategy, factors.grouping, factors.k, factors.seed) == ("hard_tail_mix", "factors", 64, 1)
    assert plain.grouping == "auto", f"the plain row keeps the configured grouping: {plain.grouping}"


def test_an_invalid_cell_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"ablation cell K=0, stratified\[factors\], seed 0"):
        cell_selections(SelectionConfig(ablation_factor_rows=["stratified"]), [], seeds=[0], ks=[0])


def test_the_ablation_preset_runs_one_row_without_condition_labels():
    config = load_config(ROOT / "configs" / "ablation.yaml")
    assert config.selection.ablation_factor_rows, "configs/ablation.yaml must hold a factors row"
    assert config.data.synthetic.ordering == "runs", "the preset is the realistic benchmark"
    assert config.data.synthetic.eval_conditions, "the preset evaluates on a shifted production mix"


def test_a_row_whose_seeds_select_the_same_images_runs_once_as_deterministic():
    # given three seeds: coverage selected the same ids each time, random did not, first_n ran one seed
    same, other = ("a", "b", "c"), ("a", "c", "d")
    selected = {
        (16, "coverage", 0): same,
        (16, "coverage", 1): same,
        (16, "coverage", 2): same,
        (16, "random", 0): same,
        (16, "random", 1): other,
        (16, "random", 2): same,
        (16, "first_n", 0): other,
        (16, "hard_tail_mix[factors]", 0): same,
    }
    # when
    runs = distinct_cells(selected)
    # then coverage runs once, marked deterministic; random keeps every seed, its repeats included
    assert runs == {
        (16, "coverage", 0): True,
        (16, "random", 0): False,
        (16, "random", 1): False,
        (16, "random", 2): False,
        (16, "first_n", 0): True,
        (16, "hard_tail_mix[factors]", 0): False,
    }, f"cells to run: {runs}"
    # and the same ids in another order are another calibration feed: not collapsed
    reordered = distinct_cells({(64, "coverage", 0): ("a", "b"), (64, "coverage", 1): ("b", "a")})
    assert reordered == {(64, "coverage", 0): False, (64, "coverage", 1): False}, f"order kept apart: {reordered}"


def test_the_ablation_can_leave_out_the_gap_decomposition():
    # given the claim benchmark's config, which decomposes each cell's gap by default
    from flows.ablation import ablation
    from tasks.config import load_for

    path = str(ROOT / "configs" / "claim.yaml")
    assert load_for(ablation.fn, {"config_path": path}).evaluation.gap_decomposition
    # when the command line turns it off, then the cells skip the weights-only evaluation
    config = load_for(ablation.fn, {"config_path": path, "gap_decomposition": False})
    assert config.evaluation.gap_decomposition is False, "--gap-decomposition=false reaches the config"
