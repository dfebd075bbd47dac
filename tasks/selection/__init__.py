"""Calibration-set selection: which K pool images NNCF calibrates on, and in what order.

`select_calibration_set(pool, config, profiles) -> Selection` is the stage function;
`SelectionInput.from_table(scores)` builds its input from the scores table (with tags), and
`describe_selection` turns the result into the run's selection.parquet and metrics.
"""

from tasks.selection.coverage import LayerTargets, layer_targets, range_coverage, range_widths
from tasks.selection.grouping import NO_FACTOR, UNKNOWN_STRATUM, factor_rarity, factor_stratum
from tasks.selection.outcome import SelectionOutcome, describe_selection
from tasks.selection.pool import PoolItem, SelectionInput, Strata
from tasks.selection.strategies import STRATEGIES, Selection, allocate, check_k_fits, select_calibration_set

__all__ = [
    "NO_FACTOR",
    "STRATEGIES",
    "UNKNOWN_STRATUM",
    "LayerTargets",
    "PoolItem",
    "Selection",
    "SelectionInput",
    "SelectionOutcome",
    "Strata",
    "allocate",
    "check_k_fits",
    "describe_selection",
    "factor_rarity",
    "factor_stratum",
    "layer_targets",
    "range_coverage",
    "range_widths",
    "select_calibration_set",
]
