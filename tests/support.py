"""Plain helpers shared by several test modules (fixtures live in the conftest files).

Everything here is loopback-only and bounded in time.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PROMPTS_DIR = ROOT / "configs" / "prompts"
DEMO_CHECKPOINT = ROOT / "models" / "demo_detector.pt"
# For modules that need the shipped demo detector: skip, saying how to build it, when it is absent.
requires_demo_detector = pytest.mark.skipif(
    not DEMO_CHECKPOINT.exists(), reason="models/demo_detector.pt not built (tailcal train-detector)"
)


# --- polling and subprocesses ---


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server for a test's stand-in gateway, with a listen backlog deep enough for
    `gateway.concurrency` connections at once. socketserver's default backlog is 5: under load (a
    CI run on two pytest processes) connections beyond it wait in the kernel, and a request that
    was sent and then timed out is rightly booked at its worst-case price, which a test counting
    exact spend reads as a defect (seen once: 45 calls booked for 42 paid replies)."""

    request_queue_size = 128
    daemon_threads = True


def wait_until(predicate, timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; bounded by construction."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment for a child Python process: the checkout importable, no external
    Redis/MLflow/Prefect server unless `extra` names one."""
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"}}
    env.update({"PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}, **extra)
    return env


# --- images that must never become candidates ---


def jpeg_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = jpeg_bytes((256, 256))
    return data[: len(data) // 2]


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A ~70-byte PNG whose header claims width×height pixels (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # IHDR data starts at byte 16 (8-byte signature, 4-byte length, 4-byte type); its CRC follows 13 bytes on.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def pool_at(uri: str | Path, pool=None):
    """`pool` (a PoolConfig; the defaults when None) reading the pool at `uri`."""
    from tasks.config import PoolConfig

    return (pool or PoolConfig()).model_copy(update={"uri": str(uri)})


def ingest_batches(uri: str | Path, pool=None) -> tuple[list[list], object]:
    """Every batch of the pool at `uri` (with `pool`'s other settings), and the ingest report."""
    from tasks.config import RuntimeEnv
    from tasks.ingest import IngestReport, iter_candidate_batches

    report = IngestReport()
    return list(iter_candidate_batches(pool_at(uri, pool), RuntimeEnv(), report)), report


def ingest(uri: str | Path, pool=None) -> tuple[list, object]:
    """The candidates of the pool at `uri`, flattened, and the ingest report."""
    batches, report = ingest_batches(uri, pool)
    return [c for batch in batches for c in batch], report


# --- scoring ---


@dataclass(frozen=True)
class Row:
    """A scorable candidate: what `score_shard` reads of one."""

    id: str
    image: bytes


def rows(pool_dir: Path, start: int = 0, count: int | None = None) -> list[Row]:
    """Rows `start` … `start + count` of a pool (all of them from `start` when count is None)."""
    table = ds.dataset(pool_dir, format="parquet").to_table(columns=["id", "image"]).slice(start, count)
    return [Row(i, b) for i, b in zip(table.column("id").to_pylist(), table.column("image").to_pylist(), strict=True)]


def embedded_config(**sections: dict) -> dict:
    """A config tree on the embedded gateway (reference-vlm at the demo's prices) with a €1 cap
    and the repository's prompts; each keyword merges its keys over that section."""
    tree: dict = {
        "gateway": {
            "url": "embedded",
            "models": [{"name": "reference-vlm", "input_eur_per_mtok": 0.14, "output_eur_per_mtok": 0.55}],
        },
        "budget": {"cap_eur": 1.0},
        "scoring": {"prompts_dir": str(PROMPTS_DIR)},
    }
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    return tree


def write_config(path: Path, **sections: dict) -> Path:
    """`embedded_config(**sections)` as a YAML file at `path`, for flows and worker processes."""
    path.write_text(yaml.safe_dump(embedded_config(**sections)))
    return path


def scoring_config(**sections):
    """The demo's scoring settings (a TailcalConfig) with per-test overrides by section."""
    from tasks.config import TailcalConfig

    base = {
        "gateway": {"concurrency": 16, "max_retries": 2, "timeout_s": 5},
        "budget": {"cap_eur": 5.0},
        "scoring": {"passes": 1},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return TailcalConfig.model_validate(embedded_config(**base))


def session_for(config, client, api_base: str, key: str = "test-key"):
    """A scoring session on `config`'s scoring setup with its own metrics registry, so counts
    are this test's alone."""
    from tasks.scoring.metrics import ScoringMetrics
    from tasks.scoring.passes import open_session
    from tasks.scoring.prompts import load_template

    template = load_template(config.scoring.prompt, config.scoring.prompts_dir)
    return open_session(config.scoring_setup, client, api_base, key, template, ScoringMetrics.create())


def start_scorer(settings=None):
    """A started reference scorer; the caller stops it."""
    from tasks.testing.reference_scorer import ReferenceScorer

    server = ReferenceScorer(settings)
    server.start()
    return server


def worker_command(config_path: Path, pool_dir: Path, start: int, count: int, out: Path) -> list[str]:
    """`python -m tests.scoring.worker …`: a separate process that scores pool rows."""
    args = [str(config_path), str(pool_dir), str(start), str(count), str(out)]
    return [sys.executable, "-m", "tests.scoring.worker", *args]


def worker_env(redis_url: str, api_base: str) -> dict[str, str]:
    return subprocess_env(REDIS_URL=redis_url, TAILCAL_TEST_API_BASE=api_base)


def run_workers(
    config_path: Path,
    pool_dir: Path,
    redis_url: str,
    api_base: str,
    slices: list[tuple[int, int]],
    out_dir: Path,
    timeout_s: float = 240,
) -> list[dict]:
    """Score each (start, count) slice of the pool in its own worker process, all at once;
    return every worker's records (as dicts), in slice order."""
    procs = [
        subprocess.Popen(
            worker_command(config_path, pool_dir, start, count, out_dir / f"w{n}.json"),
            env=worker_env(redis_url, api_base),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n, (start, count) in enumerate(slices)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, f"worker failed: {err.decode()[-2000:]}"
    return [r for n in range(len(slices)) for r in json.loads((out_dir / f"w{n}.json").read_text())]


# --- drift ---

DRIFT_THRESHOLD = 0.25  # drift.psi_threshold's default


def darken(jpeg: bytes, factor: float = 0.25):
    """A frame as if the line lighting failed: the same scene at a quarter of the exposure (uint8 RGB)."""
    import numpy as np

    with Image.open(io.BytesIO(jpeg)) as image:
        return (np.asarray(image.convert("RGB"), np.float32) * factor).astype(np.uint8)


# --- make targets ---


@contextmanager
def make_target(target: str, variables: dict[str, str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`make <target> NAME=value…` as a terminal runs it: in a session of its own, so a Ctrl-C
    (`ctrl_c`) reaches the whole group. `-o` counts the installed tree as current, so the target
    never installs (the suite runs after `make install`). Output goes to `log`. Whatever still
    runs when the block ends (an assertion failed first) is killed."""
    import psutil

    command = ["make", "--no-print-directory", "-o", ".venv/.tailcal-installed", target]
    command += [f"{name}={value}" for name, value in variables.items()]
    with log.open("wb") as output:
        make = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output, start_new_session=True)
    try:
        yield make
    finally:
        if make.poll() is None:
            for process in psutil.Process(make.pid).children(recursive=True):
                process.kill()
            make.kill()
            make.wait()


def ctrl_c(make: subprocess.Popen, timeout_s: float = 90) -> list:
    """SIGINT to `make`'s process group, as Ctrl-C in its terminal; wait for make to end. Returns
    the processes that ran under it (psutil.Process), to check that none is left."""
    import psutil

    started = psutil.Process(make.pid).children(recursive=True)
    os.killpg(make.pid, signal.SIGINT)
    make.wait(timeout=timeout_s)
    return started


# --- the LiteLLM proxy's environment ---


def gateway_env_or_skip() -> None:
    """.venv-gateway, built when missing; skips the caller only when it must be built and the
    package index cannot be reached."""
    import httpx

    from tasks.testing import gateway_env

    if gateway_env.is_current():
        return
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        httpx.get(f"{index}/litellm/", timeout=15, follow_redirects=True).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.skip(f".venv-gateway is not built and the package index {index} is unreachable ({exc!r})")
    gateway_env.ensure_gateway_env()
