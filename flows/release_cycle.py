"""The release-cycle flow: data → ingest → score → select → quantize → evaluate → MLflow.

Stages that are not built yet are listed in `PENDING_STAGES` and reported at the end of a
run, so the demo says plainly what it did and what comes next.

    python -m flows.release_cycle --config configs/demo.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from tasks import tracking
from tasks.config import RuntimeEnv, TailcalConfig, load_config
from tasks.errors import TailcalError
from tasks.services import mlflow_artifact_root, mlflow_tracking_uri, redis_service
from tasks.synth.write import ensure_benchmark

PENDING_STAGES = (
    "ingest (stream the pool from Parquet/S3)",
    "score (VLM difficulty through the gateway, cache, budget)",
    "select (top-K / hard-tail calibration set)",
    "quantize (NNCF INT8 PTQ of the detector)",
    "evaluate (INT8 vs FP16 mAP per condition)",
)


@dataclass(frozen=True)
class ReleaseSummary:
    """What a release-cycle run did, printed at the end and returned to Prefect."""

    config: str
    data_dir: str
    pool_uri: str
    pool_rows: int | None
    cache_backend: str
    cache_keys: int
    mlflow_tracking_uri: str
    mlflow_run_id: str
    pending_stages: tuple[str, ...]


@task(name="prepare-benchmark")
def prepare_benchmark(config: TailcalConfig) -> int | None:
    """Generate the synthetic benchmark when the config asks for one; return the pool size."""
    if config.data.synthetic is None:
        return None
    workers = min(os.cpu_count() or 1, 4)
    ensure_benchmark(config.data.synthetic, config.data_dir, workers=workers)
    manifest = json.loads((config.data_dir / "benchmark.json").read_text())
    return int(manifest["pool_rows"])


def _git_sha() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


@flow(name="calibration-release-cycle")
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

    with redis_service(env, config.data_dir) as redis:
        cache_keys = int(redis.client.dbsize())
        cache_backend = redis.display_url + (" (embedded Valkey)" if redis.embedded else "")

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
        },
    )
    tracking.log_params(run, tracking.config_params(config))
    tracking.finish_run(run)

    return ReleaseSummary(
        config=config_path,
        data_dir=str(config.data_dir),
        pool_uri=config.pool_uri,
        pool_rows=pool_rows,
        cache_backend=cache_backend,
        cache_keys=cache_keys,
        mlflow_tracking_uri=uri,
        mlflow_run_id=run.run_id,
        pending_stages=PENDING_STAGES,
    )


def print_summary(summary: ReleaseSummary) -> None:
    lines = [
        "",
        "tailcal release cycle — summary",
        f"  config        {summary.config}",
        f"  pool          {summary.pool_uri} ({summary.pool_rows} candidates)",
        f"  score cache   {summary.cache_backend}, {summary.cache_keys} keys",
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
        print(json.dumps(asdict(summary), indent=2))
    else:
        print_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
