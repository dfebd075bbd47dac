"""The calibration drift monitor: PSI of a production sample against a release's calibration data.

The reference is a release run's `scores.parquet` (the scored pool the calibration set
was drawn from; default) or its `selection.parquet` (the K calibration images). The
reference images are read back from the pool by id; the production sample is a bottom-k
subset of a pool URI. Both go through the serving difficulty estimate and the same image
statistics. PSI per feature, `drift.recalibrate` and the report go to MLflow.

    python -m flows.drift_monitor --config configs/demo.yaml --reference-run-id <run_id>
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefect import flow

from tasks import tracking
from tasks.config import RuntimeEnv, TailcalConfig, load_config
from tasks.errors import ConfigError, TailcalError
from tasks.services import mlflow_artifact_root, mlflow_tracking_uri

logger = logging.getLogger(__name__)

ReferenceKind = Literal["pool", "selection"]
_REFERENCE_FILES = {"pool": "scores.parquet", "selection": "selection.parquet"}


@dataclass(frozen=True)
class DriftSummary:
    """What one monitor run found; returned to Prefect and printed by the CLI."""

    reference_path: str
    production_uri: str
    psi: dict[str, float]
    drifted: tuple[str, ...]
    recalibrate: bool
    threshold: float
    n_reference: int
    n_production: int
    report_path: str
    mlflow_run_id: str


def resolve_reference(
    config: TailcalConfig, reference_path: str | None, reference_run_id: str | None, reference: ReferenceKind
) -> Path:
    """The reference Parquet: given directly, `<data_dir>/runs/<run_id>/<scores|selection>.parquet`,
    or (neither given, as on a schedule) the newest release run's file under `<data_dir>/runs/`."""
    name = _REFERENCE_FILES[reference]
    if reference_path:
        path = Path(reference_path)
    elif reference_run_id:
        path = config.data_dir / "runs" / reference_run_id / name
    else:
        # Release runs end by writing report.md; ablation runs also leave a scores.parquet.
        runs = [p for p in (config.data_dir / "runs").glob(f"*/{name}") if (p.parent / "report.md").exists()]
        if not runs:
            raise ConfigError(
                f"no release run under {config.data_dir / 'runs'} has a {name}: run the release cycle first, "
                "or name the reference with reference_path / reference_run_id"
            )
        path = max(runs, key=lambda p: p.stat().st_mtime)
        logger.info("reference: newest release run %s", path.parent.name)
    if not path.exists():
        raise ConfigError(f"reference {path} does not exist: give a release run's scores.parquet or selection.parquet")
    return path


def _reference_ids(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())


@flow(name="calibration-drift-monitor")
def drift_monitor(
    config_path: str = "configs/demo.yaml",
    reference_path: str | None = None,
    reference_run_id: str | None = None,
    reference: ReferenceKind = "pool",
    production_uri: str | None = None,
    production_subset_size: int | None = None,
    psi_threshold: float | None = None,
) -> DriftSummary:
    """Compare a production sample with a release's calibration data; flag `recalibrate` above the threshold."""
    from tasks.drift import compare_samples, sample_features
    from tasks.ingest import IngestReport, iter_candidate_batches

    overrides = {"drift.production_subset_size": production_subset_size, "drift.psi_threshold": psi_threshold}
    config = load_config(config_path, {k: v for k, v in overrides.items() if v is not None})
    env = RuntimeEnv()
    ref_path = resolve_reference(config, reference_path, reference_run_id, reference)
    production_uri = production_uri or config.pool_uri

    ids = _reference_ids(ref_path)
    # The calibration images are found by id in the pool, whatever subset the config samples.
    whole_pool = config.pool.model_copy(update={"subset_size": None})
    ref_sample = sample_features(iter_candidate_batches(config.pool_uri, whole_pool, env, IngestReport()), ids)
    logger.info("reference: %d of %d ids found in %s", len(ref_sample), len(ids), config.pool_uri)
    production_pool = config.pool.model_copy(
        update={
            "uri": production_uri,
            "subset_size": config.drift.production_subset_size,
            "sources": None,
            "captured_after": None,
            "captured_before": None,
        }
    )
    prod_report = IngestReport()
    prod_sample = sample_features(iter_candidate_batches(production_uri, production_pool, env, prod_report))
    logger.info("production: %s", prod_report.summary())
    report = compare_samples(ref_sample, prod_sample, config.drift)

    run = tracking.start_run(
        mlflow_tracking_uri(env, config.data_dir),
        config.tracking.experiment,
        None if env.mlflow_tracking_uri else mlflow_artifact_root(config.data_dir),
        run_name="drift-monitor",
        tags={
            "kind": "drift-monitor",
            "reference_run_id": reference_run_id or ref_path.parent.name,
            "drift.recalibrate": str(report.recalibrate).lower(),
        },
    )
    try:
        tracking.log_params(
            run,
            {
                "drift.reference_path": str(ref_path),
                "drift.reference": reference,
                "drift.production_uri": production_uri,
                "drift.bins": str(config.drift.bins),
                "drift.epsilon": str(config.drift.epsilon),
                "drift.psi_threshold": str(config.drift.psi_threshold),
                "drift.production_subset_size": str(config.drift.production_subset_size),
            },
        )
        tracking.log_metrics(run, report.metrics())
        out_dir = config.data_dir / "drift" / run.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        report_path = out_dir / "drift_report.json"
        report_path.write_text(json.dumps(report.as_dict(), indent=2))
        tracking.log_artifact(run, str(report_path))
    except BaseException:
        tracking.finish_run(run, "FAILED")
        raise
    tracking.finish_run(run)
    if report.recalibrate:
        logger.warning("recalibrate: PSI above %.2f for %s", report.threshold, ", ".join(report.drifted))
    return DriftSummary(
        reference_path=str(ref_path),
        production_uri=production_uri,
        psi={name: feature.psi for name, feature in report.features.items()},
        drifted=report.drifted,
        recalibrate=report.recalibrate,
        threshold=report.threshold,
        n_reference=report.n_reference,
        n_production=report.n_production,
        report_path=str(report_path),
        mlflow_run_id=run.run_id,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="calibration drift monitor (PSI per feature)")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--reference-path", default=None, help="scores.parquet or selection.parquet of a release")
    parser.add_argument("--reference-run-id", default=None, help="a release run id under <data_dir>/runs/")
    parser.add_argument("--reference", choices=sorted(_REFERENCE_FILES), default="pool")
    parser.add_argument("--production-uri", default=None, help="pool Parquet path or s3:// URI (default: pool.uri)")
    parser.add_argument("--production-subset-size", type=int, default=None)
    parser.add_argument("--psi-threshold", type=float, default=None)
    args = parser.parse_args(argv)
    try:
        summary = drift_monitor(
            config_path=args.config,
            reference_path=args.reference_path,
            reference_run_id=args.reference_run_id,
            reference=args.reference,
            production_uri=args.production_uri,
            production_subset_size=args.production_subset_size,
            psi_threshold=args.psi_threshold,
        )
    except TailcalError as exc:
        print(f"tailcal: {exc}", file=sys.stderr)
        return 2
    print(f"calibration drift — recalibrate: {summary.recalibrate} (threshold {summary.threshold})")
    for name, value in summary.psi.items():
        print(f"  {name:<12} PSI {value:.3f}{'  <- drifted' if name in summary.drifted else ''}")
    print(f"  reference {summary.n_reference} images, production {summary.n_production}")
    print(f"  report {summary.report_path}; MLflow run {summary.mlflow_run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
