"""The ablation table: cells grouped by (K, strategy, estimator), the gap's mean and sample
standard deviation over seeds, per-condition means over the seeds that measured the condition,
sorted rows, the markdown rendering, and the difference from reference strategies with a paired
bootstrap interval over eval images (n/a when the reference is not in the grid)."""

import dataclasses
import statistics

import pytest

from tasks.evaluation.coco import coco_map
from tasks.evaluation.matches import image_matches
from tasks.reporting.ablation_table import Cell, TableRow, render_table, summarize_cells
from tests.evaluation.detections import noisy, perfect

pytestmark = pytest.mark.unit


def _cell(k, strategy, estimator, seed, gap, int8_map=0.3, per_condition=None) -> Cell:
    return Cell(
        k=k,
        strategy=strategy,
        estimator=estimator,
        seed=seed,
        gap=gap,
        int8_map=int8_map,
        per_condition_gap=per_condition or {},
    )


def test_summarize_groups_by_k_strategy_estimator_with_mean_and_sample_std():
    # given three seeds of one configuration, interleaved with a different estimator
    cells = [
        _cell(64, "random", "MINMAX", 0, 0.010, int8_map=0.30),
        _cell(64, "random", "MEAN_MINMAX", 0, 0.100),
        _cell(64, "random", "MINMAX", 1, 0.020, int8_map=0.32),
        _cell(64, "random", "MINMAX", 2, 0.060, int8_map=0.34),
    ]
    # when
    rows = summarize_cells(cells)
    # then one row per (K, strategy, estimator)
    keys = [(row.k, row.strategy, row.estimator) for row in rows]
    assert keys == [(64, "random", "MEAN_MINMAX"), (64, "random", "MINMAX")], f"one sorted row per group: {keys}"
    minmax = rows[1]
    assert minmax.seeds == 3, f"three seeds in the MINMAX group: {minmax.seeds}"
    assert minmax.gap_mean == pytest.approx(0.03), f"mean of 0.01, 0.02, 0.06: {minmax.gap_mean}"
    # sample (n − 1) std: sqrt(((−0.02)² + (−0.01)² + 0.03²) / 2) = sqrt(0.0007)
    assert minmax.gap_std == pytest.approx(0.0007**0.5), f"sample std over seeds: {minmax.gap_std}"
    assert minmax.gap_std != pytest.approx(statistics.pstdev([0.01, 0.02, 0.06])), "population std is not the spec"
    assert minmax.int8_map_mean == pytest.approx(0.32), f"INT8 mAP mean: {minmax.int8_map_mean}"


def test_summarize_gives_std_zero_for_a_single_seed():
    rows = summarize_cells([_cell(32, "hard_tail_mix", "MINMAX", 7, -0.015)])
    assert len(rows) == 1, f"one cell, one row: {rows}"
    assert rows[0].seeds == 1 and rows[0].gap_std == 0.0, f"single seed has std 0, not an error: {rows[0]}"
    assert rows[0].gap_mean == pytest.approx(-0.015), f"mean of one value is that value: {rows[0].gap_mean}"


def test_summarize_averages_each_condition_over_the_seeds_that_have_it():
    # given a condition ("fog") measured by only one of two seeds
    cells = [
        _cell(64, "random", "MINMAX", 0, 0.01, per_condition={"low_light": 0.04, "fog": 0.10}),
        _cell(64, "random", "MINMAX", 1, 0.02, per_condition={"low_light": 0.02}),
    ]
    # when
    (row,) = summarize_cells(cells)
    # then fog's mean is over the one seed that has it, not diluted by the other
    assert list(row.per_condition_gap) == ["fog", "low_light"], f"conditions sorted: {list(row.per_condition_gap)}"
    assert row.per_condition_gap["low_light"] == pytest.approx(0.03), f"low_light mean: {row.per_condition_gap}"
    assert row.per_condition_gap["fog"] == pytest.approx(0.10), f"fog over its one seed: {row.per_condition_gap}"


def test_summarize_sorts_rows_by_k_then_strategy_then_estimator():
    cells = [
        _cell(256, "random", "MINMAX", 0, 0.0),
        _cell(64, "random", "MINMAX", 0, 0.0),
        _cell(64, "hard_tail_mix", "MINMAX", 0, 0.0),
        _cell(64, "hard_tail_mix", "MEAN_MINMAX", 0, 0.0),
        _cell(128, "random", "MINMAX", 0, 0.0),
    ]
    keys = [(row.k, row.strategy, row.estimator) for row in summarize_cells(cells)]
    assert keys == [
        (64, "hard_tail_mix", "MEAN_MINMAX"),
        (64, "hard_tail_mix", "MINMAX"),
        (64, "random", "MINMAX"),
        (128, "random", "MINMAX"),
        (256, "random", "MINMAX"),
    ], f"rows sorted numerically by K, then strategy, then estimator: {keys}"


def _row(k, strategy, gap_mean, gap_std, per_condition) -> TableRow:
    return TableRow(
        k=k,
        strategy=strategy,
        estimator="MINMAX",
        seeds=3,
        gap_mean=gap_mean,
        gap_std=gap_std,
        int8_map_mean=0.31234,
        per_condition_gap=per_condition,
    )


def test_render_table_header_alignment_and_one_signed_line_per_row():
    # given two rows, one with INT8 worse (positive gap) and one better (negative), and a condition only one has
    rows = [
        _row(64, "random", 0.0123, 0.0045, {"low_light": 0.05, "fog": -0.01}),
        _row(128, "hard_tail_mix", -0.002, 0.001, {"low_light": -0.03}),
    ]
    # when
    lines = render_table(rows, fp16_map=0.4, references=()).splitlines()
    # then
    assert lines[0] == "FP16 mAP@[.5:.95] = 0.4000. Gap = FP16 − INT8 (positive: INT8 worse).", f"caption: {lines[0]}"
    assert lines[1] == "", f"blank line after caption: {lines[1]!r}"
    assert lines[2] == (
        "| K | strategy | estimator | seeds | gap mean ± std | activation part | INT8 mAP | fog | low_light |"
    ), f"header with sorted condition columns: {lines[2]!r}"
    assert lines[3] == "|---|---|---|---:|---:|---:|---:|---:|---:|", f"text left, numbers right: {lines[3]!r}"
    assert len(lines) == 6, f"one line per row after header and alignment: {lines}"
    assert lines[4] == "| 64 | random | MINMAX | 3 | +0.0123 ± 0.0045 | n/a | 0.3123 | -0.0100 | +0.0500 |", (
        f"first row with signed gaps, activation part not measured: {lines[4]!r}"
    )
    second = [cell.strip() for cell in lines[5].strip("|").split("|")]
    assert second[:7] + second[8:] == [
        "128",
        "hard_tail_mix",
        "MINMAX",
        "3",
        "-0.0020 ± 0.0010",
        "n/a",
        "0.3123",
        "-0.0300",
    ], f"second row with a negative gap when INT8 is better: {lines[5]!r}"
    assert "nan" in second[7].lower(), f"a condition the row did not measure shows as nan, not a number: {second[7]!r}"
    assert lines[2].count("|") == lines[3].count("|") == lines[4].count("|"), "header, alignment, rows agree in width"


def test_render_table_shows_no_spread_for_a_single_seed():
    # given one seed: std 0.0 is "not measured", not "no spread"
    single = dataclasses.replace(_row(64, "topk", 0.0125, 0.0, {}), seeds=1)
    # when
    line = render_table([single], fp16_map=0.4, references=()).splitlines()[4]
    # then
    assert "+0.0125 ± n/a" in line and "± 0.0000" not in line, f"one seed reads ± n/a: {line!r}"


def test_render_table_ends_with_a_newline():
    text = render_table([_row(64, "random", 0.01, 0.0, {})], fp16_map=0.4)
    assert text.endswith(" |\n"), f"markdown ends with a newline after the last row: {text[-10:]!r}"


def test_as_record_rounds_key_figures_to_4_decimals():
    row = _row(64, "random", 0.012345678, 0.00456789, {"low_light": 0.1})
    record = row.as_record()
    assert record == {
        "k": 64,
        "strategy": "random",
        "estimator": "MINMAX",
        "bias_correction": "fast",
        "seeds": "3",  # a count, or "deterministic"
        "gap_mean": 0.0123,
        "gap_std": 0.0046,
    }, f"record with gap figures rounded to 4 decimals: {record}"


@pytest.fixture(scope="module")
def grid(eval_split, tmp_path_factory):
    """A K=64 MINMAX grid on the session's split: `first_n` and `random` are imperfect detectors
    (two seeds each), `hard_tail_mix` finds every box on every image (two seeds). Each cell's
    matches are saved as the ablation saves them."""
    coco, category_ids = eval_split.coco, eval_split.category_ids
    out = tmp_path_factory.mktemp("ablation-cells")
    fp16_detections = noisy(coco, category_ids, seed=100, hit_rate=0.95, jitter=0.05)
    fp16 = coco_map(coco, fp16_detections, category_ids, breakdown=False).map
    models = {
        ("first_n", 0): noisy(coco, category_ids, seed=1),
        ("first_n", 1): noisy(coco, category_ids, seed=2),
        ("random", 0): noisy(coco, category_ids, seed=3),
        ("random", 1): noisy(coco, category_ids, seed=4),
        ("hard_tail_mix", 0): perfect(coco, category_ids),
        ("hard_tail_mix", 1): perfect(coco, category_ids),
    }
    cells = []
    for (strategy, seed), detections in models.items():
        path = image_matches(coco, detections, category_ids).save(out / f"{strategy}-{seed}.npz")
        int8 = coco_map(coco, detections, category_ids, breakdown=False).map
        cells.append(Cell(64, strategy, "MINMAX", seed, fp16 - int8, int8, {}, matches_path=str(path)))
    return cells, image_matches(coco, fp16_detections, category_ids)


def test_each_row_is_compared_with_both_references_on_paired_resamples(grid):
    cells, fp16 = grid
    rows = {row.strategy: row for row in summarize_cells(cells, fp16, resamples=300, seed=0)}
    better = rows["hard_tail_mix"]
    for reference in ("first_n", "random"):
        interval = better.versus[reference]
        expected = better.gap_mean - rows[reference].gap_mean
        assert interval.estimate == pytest.approx(expected, abs=1e-9), f"Δ vs {reference}: {interval} vs {expected}"
        assert interval.high < 0, f"finding every box loses less than {reference} on any resample: {interval}"
    assert rows["first_n"].versus["first_n"] is None and rows["random"].versus["random"] is None, "no self-compare"
    assert rows["random"].versus["first_n"] is not None, "random is compared with first_n too"
    table = render_table(list(rows.values()), fp16_map=0.5)
    line = next(line for line in table.splitlines() if "| hard_tail_mix |" in line)
    assert better.versus["first_n"].describe() in line and "(reference)" not in line, f"Δ in the row: {line}"
    assert "| (reference) |" in next(line for line in table.splitlines() if "| first_n |" in line), table
    assert "95 % paired bootstrap interval over the eval images, 300 resamples" in table, table


def test_a_reference_missing_from_the_grid_reads_n_a(grid):
    # given the grid without first_n (the strategy is being added elsewhere)
    cells, fp16 = grid
    without = [cell for cell in cells if cell.strategy != "first_n"]
    rows = summarize_cells(without, fp16, references=("first_n", "random"), resamples=200)
    table = render_table(rows, fp16_map=0.5, references=("first_n", "random"))
    row = next(line for line in table.splitlines() if "| hard_tail_mix |" in line)
    cells_of_row = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells_of_row[5] == "n/a", f"Δ vs first_n cannot be computed without first_n: {row}"
    assert cells_of_row[6].startswith("-"), f"Δ vs random still is: {row}"
    assert "| Δ vs first_n | Δ vs random |" in table, f"both reference columns stay: {table}"


def test_without_per_image_matches_no_interval_is_made_up(grid):
    cells, _ = grid
    rows = summarize_cells(cells)
    assert all(value is None for row in rows for value in row.versus.values()), "no matches, no intervals"
    assert "n/a" in render_table(rows, fp16_map=0.5), "shown as n/a"


def test_a_deterministic_row_says_so_and_bias_corrections_get_a_column_only_when_crossed():
    # given coverage ran once (deterministic) and random over two seeds, each with fast and none
    cells = [
        dataclasses.replace(_cell(16, "coverage", "MINMAX", 0, 0.004), deterministic=True, bias_correction=bias)
        for bias in ("fast", "none")
    ] + [
        dataclasses.replace(_cell(16, "random", "MINMAX", seed, gap), bias_correction=bias)
        for seed, gap in ((0, 0.002), (1, 0.004))
        for bias in ("fast", "none")
    ]
    # when
    rows = summarize_cells(cells)
    table = render_table(rows, fp16_map=0.5, references=()).splitlines()
    # then one row per (K, strategy, estimator, bias correction), references compared within a bias correction
    keys = [(row.strategy, row.bias_correction, row.seeds_text) for row in rows]
    assert keys == [
        ("coverage", "fast", "deterministic"),
        ("coverage", "none", "deterministic"),
        ("random", "fast", "2"),
        ("random", "none", "2"),
    ], f"rows: {keys}"
    assert table[2].startswith("| K | strategy | estimator | bias correction | seeds |"), f"header: {table[2]}"
    assert table[3].startswith("|---|---|---|---|---:|"), f"the bias column is text: {table[3]}"
    assert table[4].startswith("| 16 | coverage | MINMAX | fast | deterministic | +0.0040 ± n/a |"), table[4]
    assert rows[0].as_record()["seeds"] == "deterministic", f"the artifact too: {rows[0].as_record()}"
    # and with one bias correction the column is left out
    single = render_table(summarize_cells(cells[:1]), fp16_map=0.5, references=()).splitlines()
    assert "bias correction" not in single[2], f"one value, no column: {single[2]}"
