"""Fixtures for the reliability and security suite: real Valkey, the reference scorer over
HTTP, generated pools. Everything is loopback-only and bounded in time."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import redis

from tasks.config import SyntheticConfig
from tasks.scoring.metrics import ScoringMetrics
from tasks.scoring.passes import ScoringSession, open_session
from tasks.scoring.prompts import load_template
from tasks.synth.write import write_pool
from tests.integration.scoring.conftest import redis_client, redis_url  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Row:
    id: str
    image: bytes


def read_rows(pool_dir: Path) -> list[Row]:
    table = ds.dataset(pool_dir, format="parquet").to_table(columns=["id", "image"])
    return [Row(i, b) for i, b in zip(table.column("id").to_pylist(), table.column("image").to_pylist(), strict=True)]


def new_session(config, client: redis.Redis, api_base: str, key: str = "reliability-key") -> ScoringSession:
    """A scoring session with its own metrics registry, so counts are this test's alone."""
    template = load_template(config.scoring.prompt)
    return open_session(config, client, api_base, key, template, ScoringMetrics.create())


@pytest.fixture(scope="session")
def distinct_pool(tmp_path_factory) -> Path:
    """2,000 distinct candidates (no bursts), so every candidate × pass is a cache miss."""
    out = tmp_path_factory.mktemp("reliability-pool") / "pool"
    write_pool(SyntheticConfig(seed=21, burst_probability=0.0), out, n=2000, workers=2)
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; bounded by construction."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env.update({"PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}, **extra)
    return env
