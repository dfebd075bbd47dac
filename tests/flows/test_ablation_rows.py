"""The ablation's rows: each strategy as configured, plus `<strategy>[factors]` rows that ignore the
condition column, as a real pool without condition labels would make them run."""

import pytest

from flows.ablation import cell_selections
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
