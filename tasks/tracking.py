"""MLflow at the edge: the only module that talks to MLflow. Flows call it with a run id.

The active MLflow run is thread-local, so flows start the run in their body and hand
`run_id` to whatever logs; logging goes through `MlflowClient`, never the fluent API.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow.data
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException

from tasks.config import RuntimeEnv, TailcalConfig
from tasks.redaction import mask_url
from tasks.services import mlflow_artifact_root, mlflow_tracking_uri


@dataclass(frozen=True)
class RunHandle:
    """Where a run lives, for logs, summaries and links."""

    tracking_uri: str
    experiment_id: str
    run_id: str


# A webhook URL is its own credential (Slack-style hooks carry the token in the path).
_HOST_ONLY_PARAMS = {"budget.webhook_url"}


def config_params(config: TailcalConfig) -> dict[str, str]:
    """The resolved config flattened to `section.key` params.

    Configs refuse secret keys and credentials in the gateway URL; as a second line, any
    URL's password is masked and the webhook URL is reduced to its scheme and host.
    """
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        elif isinstance(value, str) and "://" in value:
            parts = urlsplit(mask_url(value))
            flat[prefix] = f"{parts.scheme}://{parts.hostname}/…" if prefix in _HOST_ONLY_PARAMS else parts.geturl()
        else:
            flat[prefix] = str(value)

    walk("", config.model_dump(mode="json"))
    return flat


def start_run(
    tracking_uri: str, experiment: str, artifact_root: str | None, run_name: str, tags: dict[str, str]
) -> RunHandle:
    """Create (or reuse) the experiment and open a run in it."""
    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client, experiment, artifact_root)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    return RunHandle(tracking_uri, experiment_id, run.info.run_id)


def _experiment_id(client: MlflowClient, experiment: str, artifact_root: str | None) -> str:
    """The experiment's id, creating it when missing. Two runs that start at once (two Prefect
    workers, a new experiment) may both find it missing: the one whose create loses the race
    reads the winner's (measured: the second of two release cycles on a new experiment failed
    with RESOURCE_ALREADY_EXISTS)."""
    found = client.get_experiment_by_name(experiment)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(experiment, artifact_root)
    except MlflowException as exc:
        found = client.get_experiment_by_name(experiment)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
            raise
        return found.experiment_id


@contextmanager
def run(
    env: RuntimeEnv,
    data_dir: Path,
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, str] | None = None,
) -> Iterator[RunHandle]:
    """An MLflow run for the body of a `with`: FINISHED when it ends, FAILED when it raises.

    The store is `MLFLOW_TRACKING_URI`, else SQLite in `data_dir` with artefacts under
    `data_dir/mlartifacts` (for experiments created here).
    """
    uri = mlflow_tracking_uri(env, data_dir)
    artifact_root = None if env.mlflow_tracking_uri else mlflow_artifact_root(data_dir)
    with _closing(start_run(uri, experiment, artifact_root, run_name, tags)) as handle:
        if params:
            log_params(handle, params)
        yield handle


@contextmanager
def child_run(parent: RunHandle, run_name: str, tags: dict[str, str], params: dict[str, str]) -> Iterator[RunHandle]:
    """A run nested under `parent` for the body of a `with`, FAILED when it raises."""
    with _closing(start_child_run(parent, run_name, tags)) as handle:
        log_params(handle, params)
        yield handle


@contextmanager
def _closing(handle: RunHandle) -> Iterator[RunHandle]:
    try:
        yield handle
    except BaseException:
        finish_run(handle, "FAILED")
        raise
    finish_run(handle)


def start_child_run(parent: RunHandle, run_name: str, tags: dict[str, str]) -> RunHandle:
    """A run nested under `parent` (the MLflow UI shows it in the parent's tree)."""
    client = MlflowClient(parent.tracking_uri)
    run = client.create_run(parent.experiment_id, run_name=run_name, tags={"mlflow.parentRunId": parent.run_id, **tags})
    return RunHandle(parent.tracking_uri, parent.experiment_id, run.info.run_id)


def log_params(run: RunHandle, params: dict[str, str]) -> None:
    """Log params in MLflow's batch size limit of 100."""
    client = MlflowClient(run.tracking_uri)
    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.run_id, params=items[start : start + 100])


def log_artifact(run: RunHandle, path: str, artifact_path: str | None = None) -> None:
    MlflowClient(run.tracking_uri).log_artifact(run.run_id, path, artifact_path)


def log_metrics(run: RunHandle, metrics: dict[str, float | None], step: int = 0) -> None:
    """Log finite numeric metrics in one batch (None values are skipped, not zeroed)."""
    timestamp = int(time.time() * 1000)
    items = [Metric(key, float(value), timestamp, step) for key, value in metrics.items() if value is not None]
    client = MlflowClient(run.tracking_uri)
    for start in range(0, len(items), 1000):
        client.log_batch(run.run_id, metrics=items[start : start + 1000])


def log_pool_dataset(run: RunHandle, name: str, source: str, digest: str, sample: pd.DataFrame) -> None:
    """Record the pool as the run's input dataset, with its content digest (not pandas')."""
    with warnings.catch_warnings():
        # A local path matches two of MLflow's (equal) local source types; it warns, then picks one.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(sample, source=source, name=name, digest=digest[:36])
    tags = [InputTag(key="mlflow.data.context", value="calibration-pool")]
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags)]
    client = MlflowClient(run.tracking_uri)
    try:
        client.log_inputs(run.run_id, datasets=inputs)
    except MlflowException as exc:
        # Two runs recording the same pool at once (two Prefect workers) may both find the dataset
        # missing and insert it: the store refuses the second insert (measured: one of two release
        # cycles on the stack failed with BAD_REQUEST, an IntegrityError on MLflow's datasets
        # table). Once more, the store finds the winner's dataset and links this run to it.
        if not _lost_insert_race(exc):
            raise
        client.log_inputs(run.run_id, datasets=inputs)


def _lost_insert_race(exc: Exception) -> bool:
    """Whether an MLflow store refused a write because a concurrent one inserted the same row
    (SQLAlchemy's IntegrityError, code gkpj: SQLite's UNIQUE constraint, PostgreSQL's duplicate key)."""
    message = str(exc)
    return any(sign in message for sign in ("IntegrityError", "UNIQUE constraint failed", "duplicate key", "/gkpj"))


def finish_run(run: RunHandle, status: str = "FINISHED") -> None:
    MlflowClient(run.tracking_uri).set_terminated(run.run_id, status)
