"""Shared fixtures, and the rule that every test carries exactly one kind marker.

Redis-backed tests run on the embedded Valkey always, and also on the server REDIS_URL
names when it is set.
"""

import atexit
import os
import shutil
import signal
import tempfile

# Prefect reads its settings when it is imported, and the package no longer sets them on
# import (flows.cli applies them around a flow run). Tests that call flows directly need
# them too: a private PREFECT_HOME for this session, a start-up timeout fit for a busy
# 2-core machine, no analytics. Set before anything below can import prefect.
# pytest-xdist's workers inherit the environment of the process that started them: a home
# that process made for itself is replaced, so no two processes share Prefect's database.
if os.environ.get("PREFECT_HOME", "") in ("", os.environ.get("TAILCAL_TESTS_PREFECT_HOME")):
    _prefect_home = tempfile.mkdtemp(prefix="tailcal-tests-prefect-")
    os.environ["PREFECT_HOME"] = os.environ["TAILCAL_TESTS_PREFECT_HOME"] = _prefect_home
    atexit.register(shutil.rmtree, _prefect_home, ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect reads its logging settings at import; INFO lines from its temporary server arrive
# after pytest has closed its capture and print tracebacks, so keep Prefect at WARNING.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# The Ctrl-C tests (`make ui`, `make gateway`, `make stack`) send SIGINT as a terminal does. A
# suite started as a background job of a non-interactive shell (`sh -c '… &'`) inherits SIGINT
# ignored, its children with it, and they would sit through the Ctrl-C: give SIGINT back its
# default here, so children start with it, however the suite was launched.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

KINDS = ("unit", "integration", "e2e", "reliability")
REDIS_TARGETS = ["embedded"] + (["redis_url"] if os.environ.get("REDIS_URL") else [])


def _claim_test_db() -> int:
    """A database of the shared Redis server that no other test run on this machine holds.

    Tests flush the database they use. Two suites running at once on one machine (a CI run
    beside a developer's run) used to share database 15 and flush each other's data; each run
    now holds an exclusive flock on one of databases 15 down to 8 until it exits.
    """
    import fcntl

    for db in range(15, 7, -1):
        handle = open(Path(tempfile.gettempdir()) / f"tailcal-tests-redis-db-{db}.lock", "a")  # noqa: SIM115 — held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held_locks.append(handle)  # released when the run exits
        return db
    raise RuntimeError("databases 8–15 of REDIS_URL's server are each held by another test run on this machine")


_held_locks: list = []
TEST_DB = _claim_test_db()  # the database of REDIS_URL's server this run uses (and flushes), and no other


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Refuse the run when a collected test carries no kind marker, or more than one."""
    problems: dict[str, list[str]] = {}
    for item in items:
        kinds = sorted({mark.name for mark in item.iter_markers() if mark.name in KINDS})
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            problems.setdefault(str(item.path), []).append(f"{item.name} (kind markers: {found})")
    if problems:
        lines = [
            f"every test needs exactly one kind marker among {', '.join(KINDS)} "
            "(set `pytestmark = pytest.mark.<kind>` in the module):"
        ]
        for path, tests in sorted(problems.items()):
            shown = "; ".join(tests[:5]) + (f"; … {len(tests) - 5} more" if len(tests) > 5 else "")
            lines.append(f"  {path}: {shown}")
        raise pytest.UsageError("\n".join(lines))


@pytest.fixture(params=REDIS_TARGETS)
def redis_env(request, monkeypatch):
    """A RuntimeEnv for one Redis target; unsets REDIS_URL for the embedded variant."""
    from tasks.config import RuntimeEnv

    if request.param == "embedded":
        monkeypatch.delenv("REDIS_URL", raising=False)
    return RuntimeEnv()


@pytest.fixture
def redis_url(redis_env, tmp_path):
    """A flushed Redis database: embedded Valkey, or database TEST_DB of REDIS_URL's server."""
    import redis

    from tasks.services import redis_service

    with redis_service(redis_env, tmp_path) as service:
        url = service.url
        if not service.embedded:
            url = urlunsplit(urlsplit(url)._replace(path=f"/{TEST_DB}"))
        client = redis.Redis.from_url(url)
        client.flushdb()
        yield url
        client.flushdb()
        client.close()


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def distinct_pool(tmp_path_factory) -> Path:
    """2,000 distinct candidates (no bursts), so every candidate × pass is a cache miss."""
    from tasks.config import SyntheticConfig
    from tasks.synth.write import write_pool

    out = tmp_path_factory.mktemp("distinct-pool") / "pool"
    write_pool(SyntheticConfig(seed=21, burst_probability=0.0), out, n=2000, workers=2)
    return out


@pytest.fixture(scope="session")
def drift_pool(tmp_path_factory) -> Path:
    """120 distinct frames: the calibration pool of the drift tests."""
    from tasks.config import SyntheticConfig
    from tasks.synth.write import write_pool

    out = tmp_path_factory.mktemp("drift") / "pool"
    write_pool(SyntheticConfig(seed=4, burst_probability=0.0), out, n=120)
    return out


@pytest.fixture(scope="session")
def eval_split(tmp_path_factory):
    """A 24-frame labelled split (COCO + images), decoded once for the whole session."""
    from tasks.config import SyntheticConfig
    from tasks.evaluation.split import load_eval_split
    from tasks.synth.write import write_labelled_split

    out = tmp_path_factory.mktemp("eval")
    write_labelled_split(SyntheticConfig(seed=5), "eval", out, 24)
    return load_eval_split(out)


@pytest.fixture(scope="session")
def demo_detector():
    """The shipped demo detector (models/demo_detector.pt), on one torch thread."""
    import torch

    from tasks.config import DetectorConfig
    from tasks.detection.families import build_detector
    from tests.support import DEMO_CHECKPOINT

    torch.set_num_threads(1)
    return build_detector(DetectorConfig(checkpoint=str(DEMO_CHECKPOINT)))


@pytest.fixture(scope="session")
def fp16_ir(demo_detector, tmp_path_factory) -> Path:
    """The demo detector exported once as <dir>/detector_fp16.xml (+ .bin)."""
    from tasks.config import DetectorConfig
    from tasks.detection.export import export_ir
    from tasks.detection.families import adapter_for
    from tests.support import DEMO_CHECKPOINT

    adapter = adapter_for(demo_detector, DetectorConfig(checkpoint=str(DEMO_CHECKPOINT)), 192)
    return export_ir(demo_detector, tmp_path_factory.mktemp("fp16-ir"), adapter).xml_path
