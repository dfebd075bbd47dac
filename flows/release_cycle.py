"""The release-cycle flow: data → ingest → score → select → quantize → evaluate → MLflow.

Stages that are not built yet are listed in `PENDING_STAGES` and reported at the end of a
run, so the demo says plainly what it did and what comes next. Heavy imports (litellm,
torch, OpenVINO) stay inside functions: `prefect deploy` imports every entrypoint.

    python -m flows.release_cycle --config configs/demo.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import tracking
from tasks.config import RuntimeEnv, TailcalConfig, load_config
from tasks.errors import TailcalError
from tasks.ingest import Candidate, IngestReport, iter_candidate_batches
from tasks.services import RedisService, gateway_endpoint, mlflow_artifact_root, mlflow_tracking_uri, redis_service
from tasks.synth.write import ensure_benchmark

PENDING_STAGES = (
    "select (top-K / hard-tail calibration set)",
    "quantize (NNCF INT8 PTQ of the detector)",
    "evaluate (INT8 vs FP16 mAP per condition)",
)
SHARDS_IN_FLIGHT = 4  # bounds memory: at most this many shards of images wait or run


@dataclass(frozen=True)
class ScoringOutcome:
    scores_path: Path
    candidates: int
    skipped: int
    pool_digest: str | None
    forecast: str
    calls: int
    cache_hit_rate: float
    spend_eur: float
    spend_eur_per_pass: tuple[float, ...]
    spearman: float | None
    failed: int
    unscored: int
    reused_shards: int


@dataclass(frozen=True)
class ReleaseSummary:
    """What a release-cycle run did, printed at the end and returned to Prefect."""

    config: str
    pool_uri: str
    scoring: ScoringOutcome
    cache_backend: str
    mlflow_tracking_uri: str
    mlflow_run_id: str
    run_dir: str
    pending_stages: tuple[str, ...]


@task(name="prepare-benchmark")
def prepare_benchmark(config: TailcalConfig) -> int | None:
    """Generate the synthetic benchmark when the config asks for one; return the pool size."""
    if config.data.synthetic is None:
        return None
    ensure_benchmark(config.data.synthetic, config.data_dir, workers=min(os.cpu_count() or 1, 4))
    return int(json.loads((config.data_dir / "benchmark.json").read_text())["pool_rows"])


@task(name="score-shard", retries=2, retry_delay_seconds=5, cache_policy=NONE)
def score_shard_task(
    config: TailcalConfig,
    embedded_redis_url: str | None,
    api_base: str,
    template,
    candidates: list[Candidate],
    log_path: Path,
) -> tuple[list, bool]:
    """One shard, all passes. Secrets are read here from the environment, never passed in."""
    from tasks.scoring.gateway import gateway_key
    from tasks.scoring.shards import score_logged_shard

    redis_url = embedded_redis_url or RuntimeEnv().redis_url.get_secret_value()
    return score_logged_shard(config, redis_url, api_base, gateway_key(config.gateway), template, candidates, log_path)


def _shards(batches: Iterable[list[Candidate]], size: int) -> Iterator[list[Candidate]]:
    buffer: list[Candidate] = []
    for batch in batches:
        buffer.extend(batch)
        while len(buffer) >= size:
            yield buffer[:size]
            buffer = buffer[size:]
    if buffer:
        yield buffer


def score_pool(config: TailcalConfig, env: RuntimeEnv, redis: RedisService, api_base: str, run_dir: Path):
    """Stream the pool into scoring shards (Prefect tasks), then write scores.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.scoring.gateway import gateway_key, prepare_image
    from tasks.scoring.passes import estimate_hit_rate, open_session
    from tasks.scoring.prompts import load_template
    from tasks.scoring.results import CostForecast, scores_table, summarize
    from tasks.scoring.shards import scoring_key

    logger = get_run_logger()
    template = load_template(config.scoring.prompt)
    report = IngestReport()
    batches = iter_candidate_batches(config.pool_uri, config.pool, env, report)
    expected = min(report.rows_matched, config.pool.subset_size or report.rows_matched)
    log_dir = config.data_dir / "score-logs" / scoring_key(config, template, config.pool_uri)
    progress = create_progress_artifact(0.0, description=f"scoring {expected} candidates")
    pending: deque = deque()
    records: list = []
    this_run: list = []  # what this run did: reused shards cost it nothing
    metadata: dict[str, list] = {"id": [], "condition": [], "class_hint": [], "source": []}
    forecast, done, reused = "", 0, 0

    def collect() -> None:
        nonlocal done, reused
        shard_records, was_reused = pending.popleft().result()
        records.extend(shard_records)
        reused += was_reused
        this_run.extend(
            replace(r, status="cached", cost_eur=0.0) if was_reused and r.status == "scored" else r
            for r in shard_records
        )
        done += len(shard_records) // config.scoring.passes
        update_progress_artifact(progress, min(100.0, 100.0 * done / max(expected, 1)))

    for index, shard in enumerate(_shards(batches, config.scoring.shard_size)):
        if index == 0:
            session = open_session(config, redis.client, api_base, gateway_key(config.gateway), template)
            primary = config.gateway.models[0].name
            forecast = CostForecast(
                candidates=expected,
                passes=config.scoring.passes,
                expected_hit_rate=estimate_hit_rate(session, shard),
                eur_per_call=session.gateway.worst_case_cost(primary, prepare_image(shard[0].image, 10**6)),
            ).describe()
            logger.info(forecast)
        for candidate in shard:
            metadata["id"].append(candidate.id)
            metadata["condition"].append(candidate.condition)
            metadata["class_hint"].append(candidate.class_hint)
            metadata["source"].append(candidate.source)
        log_path = log_dir / f"shard-{index:05d}.parquet"
        embedded_url = redis.url if redis.embedded else None
        pending.append(score_shard_task.submit(config, embedded_url, api_base, template, shard, log_path))
        while len(pending) >= SHARDS_IN_FLIGHT:
            collect()
    while pending:
        collect()

    table = scores_table(records, config.scoring.passes)
    meta = pa.table(metadata)
    order = {candidate_id: row for row, candidate_id in enumerate(table.column("id").to_pylist())}
    meta = meta.take([order[i] for i in meta.column("id").to_pylist() if i in order])
    for name in ("condition", "class_hint", "source"):
        table = table.append_column(name, meta.column(name))
    run_dir.mkdir(parents=True, exist_ok=True)
    scores_path = run_dir / "scores.parquet"
    pq.write_table(table, scores_path)
    summary = summarize(this_run, config.scoring.passes)
    logger.info(
        "scored %d candidates: %d calls, hit rate %.1f%%, €%.4f, %d failed, %d unscored",
        summary.candidates,
        summary.calls,
        100 * summary.cache_hit_rate,
        summary.spend_eur,
        summary.failed,
        summary.unscored,
    )
    return ScoringOutcome(
        scores_path=scores_path,
        candidates=summary.candidates,
        skipped=len(report.skipped),
        pool_digest=report.pool_digest,
        forecast=forecast,
        calls=summary.calls,
        cache_hit_rate=summary.cache_hit_rate,
        spend_eur=summary.spend_eur,
        spend_eur_per_pass=summary.spend_eur_per_pass,
        spearman=summary.spearman,
        failed=summary.failed,
        unscored=summary.unscored,
        reused_shards=reused,
    ), metadata


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
            "prompt": config.scoring.prompt,
            "strategy": config.selection.strategy,
        },
    )
    run_dir = config.data_dir / "runs" / run.run_id
    try:
        tracking.log_params(run, tracking.config_params(config))
        with redis_service(env, config.data_dir) as redis, gateway_endpoint(config.gateway) as api_base:
            scoring, metadata = score_pool(config, env, redis, api_base, run_dir)
            cache_backend = redis.display_url + (" (embedded Valkey)" if redis.embedded else "")
        if scoring.pool_digest:
            sample = pd.DataFrame({k: v[:1000] for k, v in metadata.items()})
            tracking.log_pool_dataset(run, "candidate-pool", config.pool_uri, scoring.pool_digest, sample)
        tracking.log_metrics(run, _scoring_metrics(scoring))
        tracking.log_artifact(run, str(scoring.scores_path))
    except BaseException:
        tracking.finish_run(run, "FAILED")
        raise
    tracking.finish_run(run)

    return ReleaseSummary(
        config=config_path,
        pool_uri=config.pool_uri,
        scoring=scoring,
        cache_backend=cache_backend,
        mlflow_tracking_uri=uri,
        mlflow_run_id=run.run_id,
        run_dir=str(run_dir),
        pending_stages=PENDING_STAGES,
    )


def print_summary(summary: ReleaseSummary) -> None:
    scoring = summary.scoring
    spearman = "n/a" if scoring.spearman is None else f"{scoring.spearman:.3f}"
    lines = [
        "",
        "tailcal release cycle — summary",
        f"  config        {summary.config}",
        f"  pool          {summary.pool_uri}: {scoring.candidates} candidates, {scoring.skipped} skipped",
        f"  forecast      {scoring.forecast}",
        f"  scoring       {scoring.calls} paid calls, cache hit rate {scoring.cache_hit_rate:.1%}, "
        f"spend €{scoring.spend_eur:.4f}, {scoring.failed} failed, {scoring.unscored} unscored",
        f"                Spearman between passes {spearman}; {scoring.reused_shards} shard(s) reused from logs",
        f"  score cache   {summary.cache_backend}",
        f"  artefacts     {summary.run_dir}",
        f"  MLflow run    {summary.mlflow_run_id}",
        f"  MLflow UI     make ui   (tracking URI {summary.mlflow_tracking_uri})",
    ]
    if summary.pending_stages:
        lines.append("  not built yet (next):")
        lines += [f"    - {stage}" for stage in summary.pending_stages]
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
