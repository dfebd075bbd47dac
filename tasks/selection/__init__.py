"""Calibration-set selection: which K pool images NNCF calibrates on, and in what order.

`select_calibration_set(pool, strategy, k, seed, …) -> Selection` is the stage function;
`SelectionInput.join(scores, candidates)` builds its input from the scores table and the
ingested candidates' tags.
"""

from tasks.selection.coverage import LayerTargets, layer_targets, range_coverage
from tasks.selection.pool import PoolItem, SelectionInput
from tasks.selection.strategies import STRATEGIES, Selection, allocate, select_calibration_set

__all__ = [
    "STRATEGIES",
    "LayerTargets",
    "PoolItem",
    "Selection",
    "SelectionInput",
    "allocate",
    "layer_targets",
    "range_coverage",
    "select_calibration_set",
]
