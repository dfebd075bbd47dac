"""The calibration drift monitor: PSI of a production sample against a release's calibration data.

The reference is a release run's `scores.parquet` (the scored pool the calibration set
was drawn from; default) or its `selection.parquet` (the K calibration images). The
reference images are read back from the pool by id; the production sample is a bottom-k
subset of `drift.production_uri` (required: without it the monitor would compare the pool
with itself). Both go through the same difficulty estimate and image statistics
(`tasks.difficulty`), and are grouped by condition tag when both carry one, else by
factor tags (`tasks.drift`). PSI per feature, `drift.recalibrate`, the grouping and the
report go to MLflow.

    tailcal drift --config configs/demo.yaml --production-uri s3://line-7/today/ --reference-run-id <run_id>
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from prefect import flow

from flows.stages import flow_run_tags
from tasks import tracking
from tasks.config import Override, RuntimeEnv, TailcalConfig, load_for
from tasks.errors import ConfigError

if TYPE_CHECKING:
    from tasks.drift import DriftReport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftRunSummary:
    """What one monitor run found and where it went; returned to Prefect and printed by the CLI."""

    reference_path: str
    production_uri: str
    report: DriftReport
    report_path: str
    mlflow_run_id: str

    def describe(self) -> str:
        report = self.report
        lines = [f"calibration drift — recalibrate: {report.recalibrate} (threshold {report.threshold})"]
        for name, feature in report.features.items():
            flag = "  <- drifted" if name in report.drifted else ""
            lines.append(f"  {name:<12} PSI {feature.psi:.3f}{flag}")
        lines.append(
            f"  reference {report.n_reference} images, production {report.n_production}; grouped by {report.grouping}"
        )
        lines.append(f"  report {self.report_path}; MLflow run {self.mlflow_run_id}")
        return "\n".join(lines)


def production_sample_uri(config: TailcalConfig, config_path: str) -> str:
    """Where the production frames are: `drift.production_uri` (or --production-uri).

    Raises ConfigError when neither names them: the monitor would otherwise read the pool it was
    calibrated from and report no drift whatever production does.
    """
    uri = config.drift.production_uri
    if not uri:
        raise ConfigError(
            f"{config_path}: the drift monitor has no production frames to compare: set drift.production_uri "
            "(a Parquet path or s3:// URI where production frames land) or pass --production-uri. Comparing the "
            "calibration pool with itself would report no drift whatever production does."
        )
    return uri


@flow(name="calibration-drift-monitor")
def drift_monitor(
    config_path: str = "configs/demo.yaml",
    reference_path: str | None = None,
    reference_run_id: str | None = None,
    reference: Literal["pool", "selection"] = "pool",
    production_uri: Annotated[str | None, Override("drift.production_uri")] = None,
    production_subset_size: Annotated[int | None, Override("drift.production_subset_size")] = None,
    psi_threshold: Annotated[float | None, Override("drift.psi_threshold")] = None,
) -> DriftRunSummary:
    """Compare a production sample with a release's calibration data; flag `recalibrate` above the threshold.

    Args:
        config_path: YAML config file.
        reference_path: A release's scores.parquet or selection.parquet.
        reference_run_id: A release run id under <data_dir>/runs/ (default: the newest release run).
        reference: Compare against the scored pool or the K selected images.
        production_uri: Parquet path or s3:// URI of production frames (drift.production_uri; required).
        production_subset_size: Production rows sampled (drift.production_subset_size).
        psi_threshold: PSI above which a feature counts as drifted (drift.psi_threshold).
    """
    from tasks.drift import check_comparable, compare_samples, find_reference, reference_ids, sample_features
    from tasks.ingest import IngestReport, iter_candidate_batches

    config = load_for(drift_monitor.fn, locals())
    env = RuntimeEnv()
    production_uri = production_sample_uri(config, config_path)
    runs_dir = config.data.data_dir / "runs"
    ref_path = find_reference(runs_dir, reference, Path(reference_path) if reference_path else None, reference_run_id)

    ids = reference_ids(ref_path)
    # The calibration images are found by id in the pool, whatever subset the config samples.
    whole_pool = config.pool.model_copy(update={"subset_size": None})
    ref_sample = sample_features(iter_candidate_batches(whole_pool, env, IngestReport()), ids)
    logger.info("reference: %d of %d ids found in %s", len(ref_sample), len(ids), config.pool.uri)
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
    production_setting = "drift.production_uri (--production-uri)"
    prod_sample = sample_features(iter_candidate_batches(production_pool, env, prod_report, production_setting))
    logger.info("production: %s", prod_report.summary())
    where = {"pool": str(config.pool.uri), "reference": str(ref_path), "production": production_uri}
    check_comparable(len(ids), ref_sample, prod_sample, where)
    report = compare_samples(ref_sample, prod_sample, config.drift)

    tags = {
        "kind": "drift-monitor",
        "reference_run_id": reference_run_id or ref_path.parent.name,
        "drift.recalibrate": str(report.recalibrate).lower(),
        "drift.grouping": report.grouping,
        **flow_run_tags(),
    }
    params = tracking.config_params(config) | {
        "drift.reference_path": str(ref_path),
        "drift.reference": reference,
        "drift.production_uri": production_uri,
    }
    with tracking.run(env, config.data.data_dir, config.tracking.experiment, "drift-monitor", tags, params) as run:
        tracking.log_metrics(run, report.metrics())
        out_dir = config.data.data_dir / "drift" / run.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        report_path = out_dir / "drift_report.json"
        report_path.write_text(json.dumps(report.as_dict(), indent=2))
        tracking.log_artifact(run, str(report_path))
    if report.recalibrate:
        logger.warning("recalibrate: PSI above %.2f for %s", report.threshold, ", ".join(report.drifted))
    return DriftRunSummary(str(ref_path), production_uri, report, str(report_path), run.run_id)


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["drift", *sys.argv[1:]], error_at_exit=True))
