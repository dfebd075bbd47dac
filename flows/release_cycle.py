"""The release-cycle flow: data → ingest → score → select → quantize → evaluate → MLflow.

Heavy imports (litellm, torch, OpenVINO) stay inside functions: `prefect deploy` imports
every entrypoint.

    python -m flows.release_cycle --config configs/demo.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.scoring import ScoringOutcome, score_pool
from flows.stages import (
    SelectionOutcome,
    calibrate_and_compare,
    export_fp16_ir,
    pool_profiles,
    select_stage,
    selection_metrics,
)
from tasks import tracking
from tasks.config import RuntimeEnv, TailcalConfig, load_config
from tasks.errors import TailcalError
from tasks.services import gateway_endpoint, mlflow_artifact_root, mlflow_tracking_uri, redis_service
from tasks.synth.write import ensure_benchmark


@dataclass(frozen=True)
class ReleaseSummary:
    """What a release-cycle run did, printed at the end and returned to Prefect."""

    config: str
    pool_uri: str
    scoring: ScoringOutcome
    selection: SelectionOutcome
    range_estimator: str
    metrics: dict[str, float | None]
    report_path: str
    cache_backend: str
    mlflow_tracking_uri: str
    mlflow_run_id: str
    run_dir: str


@task(name="prepare-benchmark")
def prepare_benchmark(config: TailcalConfig) -> int | None:
    """Generate the synthetic benchmark when the config asks for one; return the pool size."""
    if config.data.synthetic is None:
        return None
    ensure_benchmark(config.data.synthetic, config.data_dir, workers=min(os.cpu_count() or 1, 4))
    return int(json.loads((config.data_dir / "benchmark.json").read_text())["pool_rows"])


def _write_outputs(config, run, run_dir: Path, scoring, selection, calibration, fp_ir: Path) -> Path:
    """Plots, report.md, IRs and tables: to the run dir, MLflow and Prefect artifacts."""
    import pyarrow.parquet as pq
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks import plots
    from tasks.report import condition_table, render_report

    scores = pq.read_table(scoring.scores_path).column("difficulty").to_pylist()
    chosen = pq.read_table(selection.selection_path).column("difficulty").to_pylist()
    comparison, clip = calibration.comparison, calibration.clipping
    figures = [
        plots.difficulty_histogram(scores, chosen, run_dir / "plots" / "difficulty_pool_vs_selected.png"),
        plots.condition_map_bars(
            comparison.fp16.per_condition, comparison.int8.per_condition, run_dir / "plots" / "map_per_condition.png"
        ),
        plots.clipping_bars(
            [layer.name for layer in clip.layers],
            [layer.clipped_fraction for layer in clip.layers],
            clip.flag_fraction,
            run_dir / "plots" / "clipping_per_layer.png",
        ),
    ]
    link = f"{run.tracking_uri} → experiment {run.experiment_id} → run {run.run_id}"
    report = render_report(
        title=f"tailcal release cycle — run {run.run_id}",
        comparison=comparison,
        strategy=selection.strategy,
        k=selection.k,
        range_estimator=config.quantization.range_estimator,
        spend_eur=scoring.spend_eur,
        calls=scoring.calls,
        cache_hit_rate=scoring.cache_hit_rate,
        spearman=scoring.spearman,
        flagged_layers=[(layer.name, layer.clipped_fraction) for layer in clip.flagged],
        mlflow_link=link,
    )
    report_path = run_dir / "report.md"
    report_path.write_text(report)
    for path in (scoring.scores_path, selection.selection_path, report_path):
        tracking.log_artifact(run, str(path))
    for figure in figures:
        tracking.log_artifact(run, str(figure), "plots")
    for ir in (fp_ir, calibration.int8_ir):
        tracking.log_artifact(run, str(ir), "ir")
        tracking.log_artifact(run, str(ir.with_suffix(".bin")), "ir")
    create_markdown_artifact(report, key="release-report", description="FP16 vs INT8 on the eval split")
    create_table_artifact(condition_table(comparison), key="per-condition-gap", description="mAP per condition")
    return report_path


def _git_sha() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def _scoring_metrics(outcome: ScoringOutcome) -> dict[str, float | None]:
    metrics = {
        "scoring.candidates": outcome.candidates,
        "scoring.calls": outcome.calls,
        "scoring.cache_hit_rate": outcome.cache_hit_rate,
        "scoring.spend_eur": outcome.spend_eur,
        "scoring.spearman_pass0_pass1": outcome.spearman,
        "scoring.failed": outcome.failed,
        "scoring.unscored": outcome.unscored,
        "ingest.skipped": outcome.skipped,
    }
    metrics |= {f"scoring.spend_eur.pass_{p}": eur for p, eur in enumerate(outcome.spend_eur_per_pass)}
    return metrics


@flow(name="calibration-release-cycle", task_runner=ThreadPoolTaskRunner(max_workers=2))
def release_cycle(
    config_path: str = "configs/demo.yaml",
    strategy: str | None = None,
    k: int | None = None,
    prompt: str | None = None,
    range_estimator: str | None = None,
    subset_size: int | None = None,
    release_id: str | None = None,
) -> ReleaseSummary:
    """Run one release cycle; the top-level knobs override the config file."""
    import pandas as pd

    logger = get_run_logger()
    overrides = {
        "selection.strategy": strategy,
        "selection.k": k,
        "scoring.prompt": prompt,
        "quantization.range_estimator": range_estimator,
        "pool.subset_size": subset_size,
    }
    config = load_config(config_path, {key: value for key, value in overrides.items() if value is not None})
    env = RuntimeEnv()

    pool_rows = prepare_benchmark(config)
    logger.info("benchmark ready under %s (%s pool rows)", config.data_dir, pool_rows)

    uri = mlflow_tracking_uri(env, config.data_dir)
    run = tracking.start_run(
        uri,
        config.tracking.experiment,
        None if env.mlflow_tracking_uri else mlflow_artifact_root(config.data_dir),
        run_name=release_id or f"release-{flow_run.get_name() or 'local'}",
        tags={
            "release_id": release_id or "",
            "git_sha": _git_sha(),
            "prefect.flow_run_id": str(flow_run.get_id() or ""),
            "prefect.flow_run_url": flow_run.get_flow_run_ui_url() or "",
            "prompt": config.scoring.prompt,
            "strategy": config.selection.strategy,
        },
    )
    run_dir = config.data_dir / "runs" / run.run_id
    try:
        tracking.log_params(run, tracking.config_params(config))
        with redis_service(env, config.data_dir) as redis, gateway_endpoint(config.gateway) as api_base:
            scoring = score_pool(config, env, redis, api_base, run_dir)
            cache_backend = redis.display_url + (" (embedded Valkey)" if redis.embedded else "")
        if scoring.pool_digest:
            sample = pd.DataFrame(scoring.dataset_sample)
            tracking.log_pool_dataset(run, "candidate-pool", config.pool_uri, scoring.pool_digest, sample)
        fp_ir = export_fp16_ir(config)
        profiles = pool_profiles(config, fp_ir) if config.selection.strategy == "coverage" else None
        selection = select_stage(config, scoring.scores_path, run_dir, profiles)
        estimator = config.quantization.range_estimator
        calibration = calibrate_and_compare(config, fp_ir, selection.ids, estimator, run_dir / "ir")
        metrics = _scoring_metrics(scoring) | selection_metrics(selection) | calibration.metrics()
        tracking.log_metrics(run, metrics)
        report_path = _write_outputs(config, run, run_dir, scoring, selection, calibration, fp_ir)
    except BaseException:
        tracking.finish_run(run, "FAILED")
        raise
    tracking.finish_run(run)

    return ReleaseSummary(
        config=config_path,
        pool_uri=config.pool_uri,
        scoring=scoring,
        selection=selection,
        range_estimator=estimator,
        metrics=metrics,
        report_path=str(report_path),
        cache_backend=cache_backend,
        mlflow_tracking_uri=uri,
        mlflow_run_id=run.run_id,
        run_dir=str(run_dir),
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_summary(summary: ReleaseSummary) -> None:
    scoring, metrics = summary.scoring, summary.metrics
    spearman = "n/a" if scoring.spearman is None else f"{scoring.spearman:.3f}"
    ratio = metrics.get("int8_vs_fp16.throughput_ratio")
    lines = [
        "",
        "tailcal release cycle — summary",
        f"  config        {summary.config}",
        f"  pool          {summary.pool_uri}: {scoring.candidates} candidates, {scoring.skipped} skipped",
        f"  forecast      {scoring.forecast}",
        f"  scoring       {scoring.calls} paid calls, cache hit rate {scoring.cache_hit_rate:.1%}, "
        f"spend €{scoring.spend_eur:.4f}, {scoring.failed} failed, {scoring.unscored} unscored",
        f"                Spearman between passes {spearman}; {scoring.reused_shards} shard(s) reused from logs",
        f"  selection     {summary.selection.strategy}, K={summary.selection.k}: mean difficulty "
        f"{_fmt(summary.selection.mean_difficulty_selected)} vs pool {_fmt(summary.selection.mean_difficulty_pool)}",
        f"  INT8 vs FP16  mAP@[.5:.95] {metrics['int8.map']:.4f} vs {metrics['fp16.map']:.4f}: "
        f"gap {metrics['gap.map']:+.4f} ({summary.range_estimator}); "
        + (f"INT8 {ratio:.2f}× FP16 throughput" if ratio else "throughput not measured"),
        "                worst conditions: "
        + ", ".join(
            f"{name.removeprefix('gap.map.')} {value:+.4f}"
            for name, value in sorted(
                ((k, v) for k, v in metrics.items() if k.startswith("gap.map.") and ".class." not in k),
                key=lambda kv: -kv[1],
            )[:3]
        ),
        f"  clipping      max {metrics['clipping.max_pct']:.2f} % of activations; "
        f"{int(metrics['clipping.flagged_layers'])} layer(s) over the threshold",
        f"  score cache   {summary.cache_backend}",
        f"  report        {summary.report_path}",
        f"  MLflow run    {summary.mlflow_run_id}  — open with `make ui` (tracking URI {summary.mlflow_tracking_uri})",
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one tailcal release cycle.")
    parser.add_argument("--config", default="configs/demo.yaml", help="YAML config (default: configs/demo.yaml)")
    parser.add_argument("--strategy", help="selection strategy override")
    parser.add_argument("--k", type=int, help="calibration set size override")
    parser.add_argument("--prompt", help="prompt template override, e.g. difficulty-v1")
    parser.add_argument("--range-estimator", help="NNCF activation range estimator override")
    parser.add_argument("--subset-size", type=int, help="score only a deterministic sample (dry run)")
    parser.add_argument("--release-id", help="release identifier for tags and run name")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        summary = release_cycle(
            config_path=args.config,
            strategy=args.strategy,
            k=args.k,
            prompt=args.prompt,
            range_estimator=args.range_estimator,
            subset_size=args.subset_size,
            release_id=args.release_id,
        )
    except TailcalError as exc:
        print(f"tailcal: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(summary), indent=2, default=str))
    else:
        print_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
