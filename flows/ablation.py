"""The ablation flow: selection strategy × range estimator × seed (× K) on one scored pool.

Scoring runs once (and a rerun is free through the cache and score logs); the FP16 IR and
its evaluation are shared; each cell selects, quantizes and evaluates INT8 and becomes a
nested MLflow run under one parent. The comparison table goes to MLflow and Prefect.

    python -m flows.ablation --config configs/ablation.yaml --strategies topk random --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.release_cycle import prepare_benchmark
from flows.scoring import score_pool
from flows.stages import calibrate_and_compare, export_fp16_ir, fp16_evaluation, pool_profiles, select_stage
from tasks import tracking
from tasks.config import RuntimeEnv, load_config
from tasks.errors import TailcalError
from tasks.services import gateway_endpoint, mlflow_artifact_root, mlflow_tracking_uri, redis_service

DEFAULT_STRATEGIES = ["topk", "random", "stratified", "hard_tail_mix", "coverage"]
DEFAULT_ESTIMATORS = ["MEAN_MINMAX", "MINMAX", "MEAN_QUANTILE", "HISTOGRAM"]
SEED_FREE = {"topk"}  # the same ids whatever the seed: one seed is enough


@dataclass(frozen=True)
class AblationResult:
    parent_run_id: str
    mlflow_tracking_uri: str
    cells: int
    fp16_map: float
    table_markdown: str
    table_path: str


@flow(name="calibration-ablation", task_runner=ThreadPoolTaskRunner(max_workers=2))
def ablation(
    config_path: str = "configs/ablation.yaml",
    strategies: list[str] | None = None,
    estimators: list[str] | None = None,
    seeds: list[int] | None = None,
    ks: list[int] | None = None,
    subset_size: int | None = None,
    release_id: str | None = None,
) -> AblationResult:
    """Every combination of the lists; the defaults are the full grid at the config's K."""
    from tasks.ablation import Cell, render_table, summarize_cells

    logger = get_run_logger()
    overrides = {"pool.subset_size": subset_size} if subset_size else {}
    config = load_config(config_path, overrides)
    strategies = strategies or DEFAULT_STRATEGIES
    estimators = estimators or DEFAULT_ESTIMATORS
    seeds = seeds if seeds is not None else [0, 1, 2]
    ks = ks or [config.selection.k]
    env = RuntimeEnv()
    prepare_benchmark(config)

    uri = mlflow_tracking_uri(env, config.data_dir)
    parent = tracking.start_run(
        uri,
        config.tracking.experiment,
        None if env.mlflow_tracking_uri else mlflow_artifact_root(config.data_dir),
        run_name=release_id or f"ablation-{flow_run.get_name() or 'local'}",
        tags={
            "kind": "ablation",
            "release_id": release_id or "",
            "prefect.flow_run_id": str(flow_run.get_id() or ""),
            "prefect.flow_run_url": flow_run.get_flow_run_ui_url() or "",
        },
    )
    run_dir = config.data_dir / "runs" / parent.run_id
    try:
        tracking.log_params(
            parent,
            tracking.config_params(config)
            | {
                "ablation.strategies": ",".join(strategies),
                "ablation.estimators": ",".join(estimators),
                "ablation.seeds": ",".join(map(str, seeds)),
                "ablation.ks": ",".join(map(str, ks)),
            },
        )
        with redis_service(env, config.data_dir) as redis, gateway_endpoint(config.gateway) as api_base:
            scoring = score_pool(config, env, redis, api_base, run_dir)
        tracking.log_artifact(parent, str(scoring.scores_path))
        fp_ir = export_fp16_ir(config)
        fp16 = fp16_evaluation(config, fp_ir)
        profiles = pool_profiles(config, fp_ir) if "coverage" in strategies else None

        cells: list[Cell] = []
        for k in ks:
            for strategy in strategies:
                for seed in seeds[:1] if strategy in SEED_FREE else seeds:
                    selection_config = config.selection.model_copy(update={"strategy": strategy, "k": k, "seed": seed})
                    cell_config = config.model_copy(update={"selection": selection_config})
                    cell_dir = run_dir / f"k{k}-{strategy}-s{seed}"
                    selection = select_stage(cell_config, scoring.scores_path, cell_dir, profiles)
                    for estimator in estimators:
                        outcome = calibrate_and_compare(
                            cell_config, fp_ir, selection.ids, estimator, cell_dir / estimator, fp16=fp16
                        )
                        child = tracking.start_child_run(
                            parent, f"{strategy}-{estimator}-k{k}-s{seed}", {"kind": "ablation-cell"}
                        )
                        tracking.log_params(
                            child,
                            {"strategy": strategy, "range_estimator": estimator, "k": str(k), "seed": str(seed)},
                        )
                        tracking.log_metrics(child, outcome.metrics())
                        tracking.finish_run(child)
                        comparison = outcome.comparison
                        cells.append(
                            Cell(
                                k,
                                strategy,
                                estimator,
                                seed,
                                comparison.gap,
                                comparison.int8.map,
                                comparison.per_condition_gap,
                            )
                        )
                        logger.info("%s × %s, K=%d, seed %d: gap %+.4f", strategy, estimator, k, seed, comparison.gap)

        rows = summarize_cells(cells)
        markdown = render_table(rows, fp16.map)
        table_path = run_dir / "ablation.md"
        table_path.write_text(markdown)
        cells_path = run_dir / "ablation_cells.json"
        cells_path.write_text(json.dumps([asdict(c) for c in cells], indent=2))
        tracking.log_artifact(parent, str(table_path))
        tracking.log_artifact(parent, str(cells_path))
        tracking.log_metrics(parent, {"fp16.map": fp16.map, "ablation.cells": len(cells)})
        create_markdown_artifact(markdown, key="ablation-table", description="INT8−FP16 gap per cell")
        create_table_artifact(
            [
                {
                    "k": r.k,
                    "strategy": r.strategy,
                    "estimator": r.estimator,
                    "seeds": r.seeds,
                    "gap_mean": round(r.gap_mean, 4),
                    "gap_std": round(r.gap_std, 4),
                }
                for r in rows
            ],
            key="ablation-gaps",
        )
    except BaseException:
        tracking.finish_run(parent, "FAILED")
        raise
    tracking.finish_run(parent)
    return AblationResult(parent.run_id, uri, len(cells), fp16.map, markdown, str(table_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a calibration ablation grid.")
    parser.add_argument("--config", default="configs/ablation.yaml")
    parser.add_argument("--strategies", nargs="+", help=f"default: {' '.join(DEFAULT_STRATEGIES)}")
    parser.add_argument("--estimators", nargs="+", help=f"default: {' '.join(DEFAULT_ESTIMATORS)}")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    parser.add_argument("--ks", nargs="+", type=int, help="default: the config's selection.k")
    parser.add_argument("--subset-size", type=int, help="score only a deterministic sample of the pool")
    parser.add_argument("--release-id")
    args = parser.parse_args(argv)
    try:
        result = ablation(
            config_path=args.config,
            strategies=args.strategies,
            estimators=args.estimators,
            seeds=args.seeds,
            ks=args.ks,
            subset_size=args.subset_size,
            release_id=args.release_id,
        )
    except TailcalError as exc:
        print(f"tailcal: {exc}", file=sys.stderr)
        return 2
    print(result.table_markdown)
    print(f"{result.cells} cells; parent MLflow run {result.parent_run_id} ({result.mlflow_tracking_uri})")
    print(f"table: {Path(result.table_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
