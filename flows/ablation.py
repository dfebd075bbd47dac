"""The ablation flow: selection strategy × range estimator × seed (× K, × bias correction) on one
scored pool.

Scoring runs once (and a rerun is free through the cache and score logs); the FP16 IR and
its evaluation are shared; each cell varies the selection and quantization sections only,
selects, quantizes and evaluates INT8, and becomes a nested MLflow run under one parent.
Each cell keeps its INT8 model's per-image matches (`matches.npz`, not the IR's worth of
data) so the table can pair cells image by image: the difference of each cell's mean gap
from `first_n` and `random` comes with a paired bootstrap interval over the eval images.
The comparison table goes to MLflow and Prefect.

A `factor_rows` strategy (`selection.ablation_factor_rows`) also runs as a row of its own,
`<strategy>[factors]`, grouped by the VLM's factor tags with the condition column ignored:
what the strategy does on a real pool, which has no condition column.

Every seed's selection is made before any PTQ. A row whose seeds all select the same images
(first_n, topk and widest_ranges always; coverage when its greedy picks fill K, so its seeded fill draws
nothing) runs once and reads "deterministic" in the table: repeating it would show the
same gap as if it were seed spread. `--bias-corrections fast none` crosses NNCF's fast bias
correction with none (`quantization.bias_correction`).

    tailcal ablate --config configs/ablation.yaml --strategies first_n topk random --seeds 0 1 2
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.scoring import pool_profile_stage, score_stage
from flows.stages import (
    calibrate_and_compare,
    evaluate_fp16,
    export_fp16_ir,
    flow_run_tags,
    load_split,
    prepare_benchmark,
    select,
)
from tasks import tracking
from tasks.config import (
    NEEDS_PROFILES,
    BiasCorrection,
    GroupingStrategy,
    Override,
    RangeEstimator,
    RuntimeEnv,
    SelectionConfig,
    SelectionStrategy,
    load_for,
    section_with,
)

if TYPE_CHECKING:
    from tasks.reporting.ablation_table import TableRow

DEFAULT_STRATEGIES: list[SelectionStrategy] = [
    "first_n",
    "topk",
    "random",
    "stratified",
    "hard_tail_mix",
    "coverage",
    "widest_ranges",
]
DEFAULT_ESTIMATORS: list[RangeEstimator] = ["MEAN_MINMAX", "MINMAX", "MEAN_QUANTILE", "HISTOGRAM"]
SEED_FREE = {"topk", "first_n", "widest_ranges"}  # the same ids whatever the seed: one seed is enough
# Strategies every row is compared with: the users' default (NNCF's first N) and a random draw.
REFERENCES = ("first_n", "random")


@dataclass(frozen=True)
class AblationResult:
    parent_run_id: str
    mlflow_tracking_uri: str
    cells: int
    fp16_map: float
    table_markdown: str
    table_path: str
    rows: list[TableRow] = field(default_factory=list)

    def describe(self) -> str:
        """The table and where it went, as `tailcal ablate` prints them."""
        return (
            f"{self.table_markdown}\n{self.cells} cells; parent MLflow run {self.parent_run_id} "
            f"({self.mlflow_tracking_uri})\ntable: {self.table_path}"
        )


def cell_selections(
    selection: SelectionConfig, strategies: list[SelectionStrategy], seeds: list[int], ks: list[int]
) -> dict[tuple[int, str, int], SelectionConfig]:
    """The selection section of every cell, keyed (K, row label, seed), in running order.

    A row is each strategy as configured, then each `selection.ablation_factor_rows` strategy
    as `<strategy>[factors]`, grouped by the VLM's factor tags. Seed-free strategies run one
    seed. Raises ConfigError naming the cell whose section is invalid.
    """
    rows: dict[str, dict[str, str]] = {s: {"strategy": s} for s in strategies}
    rows |= {f"{s}[factors]": {"strategy": s, "grouping": "factors"} for s in selection.ablation_factor_rows}
    return {
        (k, label, seed): section_with(selection, f"ablation cell K={k}, {label}, seed {seed}", k=k, seed=seed, **row)
        for k in ks
        for label, row in rows.items()
        for seed in (seeds[:1] if row["strategy"] in SEED_FREE else seeds)
    }


def distinct_cells(selected: dict[tuple[int, str, int], tuple[str, ...]]) -> dict[tuple[int, str, int], bool]:
    """The cells to run, from every cell's selected ids (keyed (K, row label, seed)), each with
    whether it is deterministic.

    A (K, row) whose seeds all selected the same ids in the same order runs once, its first
    seed, marked deterministic; so does a seed-free strategy (first_n, topk). Otherwise every
    seed runs, marked not deterministic (one seed alone cannot show that a strategy ignores it).
    """
    rows: dict[tuple[int, str], list[tuple[int, str, int]]] = {}
    for key in selected:
        rows.setdefault(key[:2], []).append(key)
    keep = {}
    for (_, label), keys in rows.items():
        same = len(keys) > 1 and len({selected[key] for key in keys}) == 1
        strategy = label.split("[", 1)[0]
        if same or strategy in SEED_FREE:
            keep[keys[0]] = True
        else:
            keep |= dict.fromkeys(keys, False)
    return keep


@flow(name="calibration-ablation", task_runner=ThreadPoolTaskRunner(max_workers=2))
def ablation(
    config_path: str = "configs/ablation.yaml",
    strategies: list[SelectionStrategy] | None = None,
    estimators: list[RangeEstimator] | None = None,
    bias_corrections: list[BiasCorrection] | None = None,
    seeds: list[int] | None = None,
    ks: list[int] | None = None,
    subset_size: Annotated[int | None, Override("pool.subset_size")] = None,
    factor_rows: Annotated[list[GroupingStrategy] | None, Override("selection.ablation_factor_rows")] = None,
    gap_decomposition: Annotated[bool | None, Override("evaluation.gap_decomposition")] = None,
    release_id: str | None = None,
) -> AblationResult:
    """Cross selection strategies, range estimators, bias corrections, seeds and K on one scored pool.

    Every combination becomes a nested MLflow run; the table of INT8−FP16 gaps (mean ± std
    over seeds, per condition, and the difference from first_n and random with a paired
    95 % interval over the eval images) goes to the parent run.

    Args:
        config_path: YAML config file.
        strategies: Selection strategies to compare (default: all seven).
        estimators: NNCF activation range estimators (default: all four).
        bias_corrections: NNCF bias correction after PTQ, fast or none (default: the config's
            quantization.bias_correction); more than one adds a column to the table.
        seeds: Selection seeds, ≥ 0 (default: 0 1 2). A strategy that selects the same images for
            every seed (first_n, topk, widest_ranges; coverage when its greedy picks fill K) runs once:
            "deterministic".
        ks: Calibration set sizes (default: the config's selection.k).
        subset_size: Score only a deterministic sample of this many candidates (pool.subset_size).
        factor_rows: Strategies run once more grouped by the VLM's factor tags, the condition column ignored
            (selection.ablation_factor_rows).
        gap_decomposition: Also evaluate each cell's weights-only INT8 model, for the activation part of its gap
            (evaluation.gap_decomposition); off, a cell costs one evaluation less.
        release_id: Release identifier for the MLflow run name and tags.
    """
    import pyarrow.parquet as pq

    from tasks.reporting.ablation_table import Cell, render_table, summarize_cells

    config = load_for(ablation.fn, locals())
    logger = get_run_logger()
    # Repeats would only run a cell twice; order is kept.
    strategies = list(dict.fromkeys(strategies or DEFAULT_STRATEGIES))
    estimators = list(dict.fromkeys(estimators or DEFAULT_ESTIMATORS))
    bias_corrections = list(dict.fromkeys(bias_corrections or [config.quantization.bias_correction]))
    seeds = list(dict.fromkeys(seeds if seeds else [0, 1, 2]))
    ks = list(dict.fromkeys(ks or [config.selection.k]))
    # Every cell's sections are validated now, before the pool is scored and paid for.
    selections = cell_selections(config.selection, strategies, seeds, ks)
    grid = list(selections)
    rows = list(dict.fromkeys(label for _, label, _ in grid))
    quantizations = {
        (e, b): section_with(config.quantization, "ablation estimators", range_estimator=e, bias_correction=b)
        for e in estimators
        for b in bias_corrections
    }
    # Each cell measures its gap's activation part (one more evaluation), not each quantizer's.
    evaluation = section_with(config.evaluation, "ablation cells", attributed_quantizers=0)
    env = RuntimeEnv()
    prepare_benchmark(config.data)

    params = tracking.config_params(config) | {
        "ablation.strategies": ",".join(rows),
        "ablation.estimators": ",".join(estimators),
        "ablation.bias_corrections": ",".join(bias_corrections),
        "ablation.seeds": ",".join(map(str, seeds)),
        "ablation.ks": ",".join(map(str, ks)),
    }
    tags = {"kind": "ablation", "release_id": release_id or "", **flow_run_tags()}
    run_name = release_id or f"ablation-{flow_run.get_name() or 'local'}"
    with tracking.run(env, config.data.data_dir, config.tracking.experiment, run_name, tags, params) as parent:
        run_dir = config.data.data_dir / "runs" / parent.run_id
        # Detector and eval split first: a bad checkpoint or split fails before scoring is paid.
        fp_ir = export_fp16_ir(config.detector, config.data.data_dir / "models")
        split = load_split(config.evaluation, config.detector)
        scored = score_stage(config, env, run_dir, largest_k=max(ks))
        tracking.log_artifact(parent, str(scored.scores_path))
        fp16 = evaluate_fp16(fp_ir, split, config.evaluation)
        fp16.matches.save(run_dir / "fp16_matches.npz")
        needs_profiles = any(section.strategy in NEEDS_PROFILES for section in selections.values())
        profiles = pool_profile_stage(config, env, fp_ir) if needs_profiles else None

        # Every seed's selection first (seconds, next to a PTQ per cell): seeds that select the
        # same images would only repeat one cell.
        chosen = {key: select(scored.outcome.scores, selections[key], profiles) for key in grid}
        runs = distinct_cells({key: outcome.selection.ids for key, outcome in chosen.items()})
        cells: list[Cell] = []
        for (k, strategy, seed), deterministic in runs.items():
            cell_dir = run_dir / f"k{k}-{strategy}-s{seed}"
            selection = chosen[(k, strategy, seed)]
            cell_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(selection.table, cell_dir / "selection.parquet")
            for (estimator, bias_correction), quantization in quantizations.items():
                variant = estimator if len(bias_corrections) == 1 else f"{estimator}-bias-{bias_correction}"
                outcome = calibrate_and_compare(
                    config.pool,
                    quantization,
                    evaluation,
                    fp_ir,
                    fp16,
                    split,
                    selection.selection.ids,
                    cell_dir / variant,
                )
                cell_params = {
                    "strategy": strategy,
                    "range_estimator": estimator,
                    "bias_correction": bias_correction,
                    "k": str(k),
                    "seed": "deterministic" if deterministic else str(seed),
                }
                cell_params["grouping"] = selection.grouping  # what its strata were made of, as resolved
                name = f"{strategy}-{variant}-k{k}-s{seed}"
                with tracking.child_run(parent, name, {"kind": "ablation-cell"}, cell_params) as child:
                    tracking.log_metrics(child, outcome.metrics())
                result = outcome.comparison
                matches_path = result.int8.matches.save(cell_dir / variant / "matches.npz")
                cells.append(
                    Cell(
                        k,
                        strategy,
                        estimator,
                        seed,
                        result.gap,
                        result.int8.map,
                        result.per_condition_gap,
                        matches_path=str(matches_path),
                        activation_part=result.activation_gap,
                        bias_correction=bias_correction,
                        deterministic=deterministic,
                    )
                )
                logger.info(
                    "%s × %s (bias correction %s), K=%d, seed %s: gap %+.4f",
                    strategy,
                    estimator,
                    bias_correction,
                    k,
                    "deterministic" if deterministic else seed,
                    result.gap,
                )

        rows = summarize_cells(
            cells,
            fp16.matches,
            REFERENCES,
            resamples=config.evaluation.bootstrap_resamples,
            seed=config.evaluation.bootstrap_seed,
        )
        markdown = render_table(rows, fp16.map, REFERENCES)
        table_path = run_dir / "ablation.md"
        table_path.write_text(markdown)
        cells_path = run_dir / "ablation_cells.json"
        cells_path.write_text(json.dumps([asdict(c) for c in cells], indent=2))
        tracking.log_artifact(parent, str(table_path))
        tracking.log_artifact(parent, str(cells_path))
        tracking.log_metrics(parent, {"fp16.map": fp16.map, "ablation.cells": len(cells)})
        create_markdown_artifact(markdown, key="ablation-table", description="INT8−FP16 gap per cell")
        create_table_artifact([row.as_record() for row in rows], key="ablation-gaps")
    return AblationResult(parent.run_id, parent.tracking_uri, len(cells), fp16.map, markdown, str(table_path), rows)


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["ablate", *sys.argv[1:]], error_at_exit=True))
