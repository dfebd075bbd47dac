"""The release-cycle flow: data → ingest → score → select → quantize → evaluate → MLflow.

Heavy imports (litellm, torch, OpenVINO) stay inside functions: `prefect deploy` imports
every entrypoint.

    tailcal run --config configs/demo.yaml
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.scoring import ScoredPool, log_pool_dataset, pool_profile_stage, score_stage
from flows.stages import (
    CalibrationOutcome,
    calibrate_and_compare,
    compare_with_baseline,
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
    Override,
    RangeEstimator,
    RuntimeEnv,
    SelectionStrategy,
    TailcalConfig,
    load_for,
)

if TYPE_CHECKING:
    from tasks.calibration.decomposition import GapDecomposition
    from tasks.evaluation.comparison import BaselineComparison
    from tasks.evaluation.split import EvalSplit
    from tasks.selection import SelectionOutcome


MIN_RANKED_IMAGES = 20  # eval images a condition needs before its gap is ranked among the worst


@dataclass(frozen=True)
class ReleaseSummary:
    """What a release-cycle run did, printed at the end and returned to Prefect."""

    config: str
    pool_uri: str
    scored: ScoredPool
    selection: SelectionOutcome
    range_estimator: str
    metrics: dict[str, float | None]
    report_path: str
    mlflow_tracking_uri: str
    mlflow_run_id: str
    run_dir: str
    decomposition: GapDecomposition | None = None
    baseline: BaselineComparison | None = None
    baseline_setting: str = "none"  # evaluation.baseline as configured
    bias_correction: str = "fast"

    def describe(self) -> str:
        """The end-of-run summary `tailcal run` prints."""
        outcome, metrics = self.scored.outcome, self.metrics
        s = outcome.summary
        spearman = "n/a" if s.spearman is None else f"{s.spearman:.3f}"
        ratio = metrics.get("int8_vs_fp16.throughput_ratio")
        selection = self.selection
        lines = [
            "",
            "tailcal release cycle — summary",
            f"  config        {self.config}",
            f"  pool          {self.pool_uri}: {s.candidates} candidates, {len(outcome.ingest.skipped)} skipped",
            f"  forecast      {outcome.forecast.describe() if outcome.forecast else 'n/a'}",
            f"  scoring       {s.calls} paid calls, cache hit rate {s.cache_hit_rate:.1%}, "
            f"spend €{s.spend_eur:.4f}, {s.failed} failed, {s.unscored} unscored",
            f"                Spearman between passes {spearman}; {outcome.reused_shards} shard(s) reused from logs",
            f"  selection     {selection.selection.strategy}, K={selection.selection.k}: mean difficulty "
            f"{_fmt(selection.mean_difficulty_selected)} vs pool {_fmt(selection.mean_difficulty_pool)}",
            f"  INT8 vs FP16  mAP@[.5:.95] {metrics['int8.map']:.4f} vs {metrics['fp16.map']:.4f}: "
            f"gap {metrics['gap.map']:+.4f} ({self.range_estimator}, bias correction {self.bias_correction}); "
            + (f"INT8 {ratio:.2f}× FP16 throughput" if ratio else "throughput not measured"),
            f"                worst conditions: {_worst_conditions(metrics)}",
            "  gap split     "
            + (
                self.decomposition.describe(metrics["fp16.map"], metrics["int8.map"])
                if self.decomposition
                else "not measured (evaluation.gap_decomposition is off)"
            ),
            self._baseline_line(),
            f"  clipping      max {metrics['clipping.max_pct']:.2f} % of activations; "
            f"{int(metrics['clipping.flagged_layers'])} layer(s) over the threshold",
            f"  score cache   {self.scored.cache_backend}",
            f"  report        {self.report_path}",
            f"  MLflow run    {self.mlflow_run_id}  — open with `make ui` (tracking URI {self.mlflow_tracking_uri})",
        ]
        return "\n".join(lines)

    def _baseline_line(self) -> str:
        strategy = self.selection.selection.strategy
        if self.baseline is not None:
            return f"  vs {self.baseline.strategy:<10} " + self.baseline.describe(strategy)
        if self.baseline_setting == "none":
            return "  baseline      not run (evaluation.baseline: none)"
        return f"  baseline      the chosen set is {self.baseline_setting} itself"


def _worst_conditions(metrics: dict[str, float | None], shown: int = 3) -> str:
    """The conditions INT8 loses most on, with the eval images each gap rests on. Gaps that print
    as +0.0000 or below are not losses; a condition with fewer than MIN_RANKED_IMAGES eval images
    is named apart, unranked: its gap is a few images' noise (2 images once ranked first at +0.15)."""
    gaps = {
        k.removeprefix("gap.map."): v
        for k, v in metrics.items()
        if k.startswith("gap.map.") and ".class." not in k and v is not None
    }
    counts = {c: metrics.get(f"eval.images.{c}") for c in gaps}
    few = sorted(c for c, n in counts.items() if n is not None and n < MIN_RANKED_IMAGES)
    ranked = sorted(((c, g) for c, g in gaps.items() if c not in few and round(g, 4) > 0), key=lambda cg: -cg[1])[
        :shown
    ]
    text = ", ".join(
        f"{c} {g:+.4f}" + (f" ({int(counts[c])} images)" if counts[c] is not None else "") for c, g in ranked
    )
    text = text or "none (INT8 loses on no condition)"
    if few:
        text += f"; under {MIN_RANKED_IMAGES} eval images, not ranked: " + ", ".join(
            f"{c} ({int(counts[c])})" for c in few
        )
    return text


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _git_sha() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def _write_outputs(
    config: TailcalConfig,
    run: tracking.RunHandle,
    run_dir: Path,
    scored: ScoredPool,
    selection: SelectionOutcome,
    calibration: CalibrationOutcome,
    fp_ir: Path,
    split: EvalSplit,
    baseline: BaselineComparison | None = None,
) -> Path:
    """selection.parquet, plots, report.md, both IRs and what their labels mean (categories.json):
    to the run dir, MLflow and Prefect artifacts."""
    import pyarrow.parquet as pq
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.detection.labels import CATEGORIES_FILE, Categories
    from tasks.reporting import plots
    from tasks.reporting.report import condition_table, render_report

    selection_path = run_dir / "selection.parquet"
    pq.write_table(selection.table, selection_path)
    comparison, clip = calibration.comparison, calibration.clipping
    figures = [
        plots.difficulty_histogram(
            scored.outcome.scores.column("difficulty").to_pylist(),
            selection.table.column("difficulty").to_pylist(),
            run_dir / "plots" / "difficulty_pool_vs_selected.png",
        ),
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
    summary = scored.outcome.summary
    report = render_report(
        title=f"tailcal release cycle — run {run.run_id}",
        comparison=comparison,
        strategy=selection.selection.strategy,
        k=selection.selection.k,
        range_estimator=config.quantization.range_estimator,
        spend_eur=summary.spend_eur,
        calls=summary.calls,
        cache_hit_rate=summary.cache_hit_rate,
        spearman=summary.spearman,
        flagged_layers=[(layer.name, layer.clipped_fraction) for layer in clip.flagged],
        decomposition=calibration.decomposition,
        baseline=baseline,
        bias_correction=config.quantization.bias_correction,
        mlflow_link=f"{run.tracking_uri} → experiment {run.experiment_id} → run {run.run_id}",
    )
    report_path = run_dir / "report.md"
    report_path.write_text(report)
    for path in (scored.scores_path, selection_path, report_path):
        tracking.log_artifact(run, str(path))
    for figure in figures:
        tracking.log_artifact(run, str(figure), "plots")
    for ir in (fp_ir, calibration.quantized.int8_ir_path):
        tracking.log_artifact(run, str(ir), "ir")
        tracking.log_artifact(run, str(ir.with_suffix(".bin")), "ir")
    categories = Categories.of_split(split.coco, split.category_ids)
    tracking.log_artifact(run, str(categories.write(run_dir / "ir" / CATEGORIES_FILE)), "ir")
    create_markdown_artifact(report, key="release-report", description="FP16 vs INT8 on the eval split")
    create_table_artifact(condition_table(comparison), key="per-condition-gap", description="mAP per condition")
    return report_path


@flow(name="calibration-release-cycle", task_runner=ThreadPoolTaskRunner(max_workers=2))
def release_cycle(
    config_path: str = "configs/demo.yaml",
    strategy: Annotated[SelectionStrategy | None, Override("selection.strategy")] = None,
    k: Annotated[int | None, Override("selection.k")] = None,
    prompt: Annotated[str | None, Override("scoring.prompt")] = None,
    range_estimator: Annotated[RangeEstimator | None, Override("quantization.range_estimator")] = None,
    bias_correction: Annotated[BiasCorrection | None, Override("quantization.bias_correction")] = None,
    subset_size: Annotated[int | None, Override("pool.subset_size")] = None,
    release_id: str | None = None,
) -> ReleaseSummary:
    """Run one release cycle: score the pool, select K images, quantize on them, compare INT8 with FP16.

    The options override the config file's values.

    Args:
        config_path: YAML config file.
        strategy: Selection strategy (selection.strategy).
        k: Calibration set size (selection.k).
        prompt: Prompt template, e.g. difficulty-v1 (scoring.prompt).
        range_estimator: NNCF activation range estimator (quantization.range_estimator).
        bias_correction: NNCF's fast bias correction after PTQ, fast or none (quantization.bias_correction).
        subset_size: Score only a deterministic sample of this many candidates (pool.subset_size).
        release_id: Release identifier for the MLflow run name and tags.
    """
    config = load_for(release_cycle.fn, locals())
    logger = get_run_logger()
    env = RuntimeEnv()

    pool_rows = prepare_benchmark(config.data)
    logger.info("benchmark ready under %s (%s pool rows)", config.data.data_dir, pool_rows)
    tags = {
        "release_id": release_id or "",
        "git_sha": _git_sha(),
        **flow_run_tags(),
        "prompt": config.scoring.prompt,
        "strategy": config.selection.strategy,
    }
    run_name = release_id or f"release-{flow_run.get_name() or 'local'}"
    with tracking.run(
        env, config.data.data_dir, config.tracking.experiment, run_name, tags, tracking.config_params(config)
    ) as run:
        run_dir = config.data.data_dir / "runs" / run.run_id
        # The detector and the eval split are read first: a bad checkpoint or a missing split
        # fails before the pool is scored and paid for.
        fp_ir = export_fp16_ir(config.detector, config.data.data_dir / "models")
        split = load_split(config.evaluation, config.detector)
        scored = score_stage(config, env, run_dir, largest_k=config.selection.k)
        log_pool_dataset(run, config, scored)
        fp16 = evaluate_fp16(fp_ir, split, config.evaluation)
        profiles = pool_profile_stage(config, env, fp_ir) if config.selection.strategy in NEEDS_PROFILES else None
        selection = select(scored.outcome.scores, config.selection, profiles)
        calibration = calibrate_and_compare(
            config.pool,
            config.quantization,
            config.evaluation,
            fp_ir,
            fp16,
            split,
            selection.selection.ids,
            run_dir / "ir",
        )
        metrics = scored.outcome.metrics() | selection.metrics() | calibration.metrics()
        baseline = None
        if config.evaluation.baseline not in ("none", config.selection.strategy):
            baseline = compare_with_baseline(
                config.pool,
                config.selection,
                config.quantization,
                config.evaluation,
                scored.outcome.scores,
                fp_ir,
                fp16,
                calibration.comparison.int8,
                split,
                run_dir / f"baseline-{config.evaluation.baseline}",
            )
            metrics |= baseline.metrics()
        tracking.log_metrics(run, metrics)
        report_path = _write_outputs(config, run, run_dir, scored, selection, calibration, fp_ir, split, baseline)

    return ReleaseSummary(
        config=config_path,
        pool_uri=config.pool.uri,
        scored=scored,
        selection=selection,
        range_estimator=config.quantization.range_estimator,
        metrics=metrics,
        report_path=str(report_path),
        mlflow_tracking_uri=run.tracking_uri,
        mlflow_run_id=run.run_id,
        run_dir=str(run_dir),
        decomposition=calibration.decomposition,
        baseline=baseline,
        baseline_setting=config.evaluation.baseline,
        bias_correction=config.quantization.bias_correction,
    )


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["run", *sys.argv[1:]], error_at_exit=True))
