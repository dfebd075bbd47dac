"""Local servers for the demo's stores: `make deploy` and `make ui`.

- `make deploy` (`python -m flows.deploy_local deploy`): workers refuse the ephemeral API,
  so deployments need a real server. This starts one on 127.0.0.1, creates the
  `tailcal-process` work pool, runs `prefect deploy --all` from the project directory (the
  one holding prefect.yaml, the working directory by default) and starts a worker; the e2e
  deployment test uses the same class.
- `make ui` (`python -m flows.deploy_local ui`): the MLflow UI and the Prefect UI on the
  demo's stores, until Ctrl-C.

Every process here is a `tasks.services.ServerProcess`: it gets the offline environment
(`offline_environment`), and Ctrl-C (or SIGTERM) stops it with everything it spawned.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from tasks.errors import ServiceError
from tasks.services import ServerProcess, offline_environment

WORK_POOL = "tailcal-process"
SERVER_START_S = 180  # a Prefect or MLflow server on a busy 2-core machine


class StartedOnEnter:
    """A context manager over `start()` and `stop()`: a start that fails half-way stops what it started."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class LocalPrefect(StartedOnEnter):
    """A Prefect server on 127.0.0.1:`port` (state in `home`), the `tailcal-process` work pool,
    prefect.yaml's deployments and `workers` process workers; a context manager.

    `worker_env` goes to the workers alone (and so to the flow runs they start): where the
    stores are and the secrets the flows need, which the server and the CLI never see.
    """

    def __init__(
        self,
        home: Path,
        port: int = 4200,
        project: Path | None = None,
        workers: int = 1,
        worker_env: Mapping[str, str] | None = None,
    ) -> None:
        project = (project or Path.cwd()).resolve()
        if not (project / "prefect.yaml").exists():
            raise FileNotFoundError(
                f"no prefect.yaml in {project}: run from the tailcal project directory (where prefect.yaml is)"
            )
        self.project = project
        self.port = port
        self.home = home.resolve()
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.env = offline_environment(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_WORKER_QUERY_SECONDS="2",
            TAILCAL_CHECKOUT=str(project),
        )
        self.workers = workers
        self.worker_env = dict(worker_env or {})
        self.processes: list[ServerProcess] = []
        self._prefect = [sys.executable, "-m", "prefect"]

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a prefect CLI command against this server; raises with its output on failure."""
        result = subprocess.run(
            [*self._prefect, *args], env=self.env, cwd=self.project, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def start(self) -> None:
        server = self._spawn("Prefect server", ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)])
        server.wait_until_answers(f"{self.api_url}/health", SERVER_START_S)
        self.prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
        self.prefect("--no-prompt", "deploy", "--all")
        for number in range(1, self.workers + 1):
            name = "Prefect worker" if self.workers == 1 else f"Prefect worker {number}"
            self._spawn(name, ["worker", "start", "--pool", WORK_POOL], self.worker_env)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> ServerProcess:
        log_path = self.home / f"{name.removeprefix('Prefect ').replace(' ', '-')}.log"
        environment = {**self.env, **(env or {})}
        process = ServerProcess(name, [*self._prefect, *args], env=environment, cwd=self.project, log_path=log_path)
        self.processes.append(process)
        process.start()
        return process


def run_until_interrupted(servers: Sequence[ServerProcess], command: str) -> int:
    """Block until Ctrl-C (return 0) or until one of `servers` stops on its own (return 1, naming it)."""
    try:
        while all(server.alive() for server in servers):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    stopped = next(server.name for server in servers if not server.alive())
    print(f"{command}: the {stopped} stopped on its own; stopping the rest", file=sys.stderr)
    return 1


def serve_ui(mlflow_store: str, prefect_home: Path, mlflow_port: int, prefect_port: int) -> int:
    """Serve the MLflow UI on `mlflow_store` and the Prefect UI on `prefect_home`'s database
    until Ctrl-C or SIGTERM; return the exit code (1 when a server stopped on its own)."""
    address = ["--host", "127.0.0.1", "--port", str(mlflow_port)]
    # one person's UI: one worker starts fastest (MLflow's default is 4)
    mlflow = ServerProcess(
        "MLflow UI",
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", mlflow_store, *address, "--workers", "1"],
    )
    prefect = ServerProcess(
        "Prefect UI",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        env=offline_environment(PREFECT_HOME=str(prefect_home.resolve())),
    )
    servers = [mlflow, prefect]
    # SIGTERM (from `kill`, a supervisor) stops the servers as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for server in servers:
            server.start()
        mlflow.wait_until_answers(f"http://127.0.0.1:{mlflow_port}/health", SERVER_START_S)
        prefect.wait_until_answers(f"http://127.0.0.1:{prefect_port}/api/health", SERVER_START_S)
        print(
            f"MLflow UI  http://127.0.0.1:{mlflow_port}    Prefect UI  http://127.0.0.1:{prefect_port}"
            "    (Ctrl-C stops both)",
            flush=True,
        )
        return run_until_interrupted(servers, "make ui")
    except KeyboardInterrupt:
        return 0
    except ServiceError as error:
        print(f"make ui: {error}", file=sys.stderr)
        return 1
    finally:
        for server in reversed(servers):
            server.stop()


def deploy() -> int:
    with LocalPrefect(Path.cwd() / ".prefect-server") as local:
        print(f"Prefect UI  http://127.0.0.1:{local.port}   (API {local.api_url})")
        print("deployments: calibration-release-cycle/release-cycle (weekly), calibration-ablation/ablation")
        print(f"in another shell:  export PREFECT_API_URL={local.api_url}")
        print("  .venv/bin/prefect deployment run 'calibration-release-cycle/release-cycle' \\")
        print("      --param config_path=configs/demo.yaml --param strategy=random --param k=256")
        print("worker running; Ctrl-C stops the worker and the server", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy_local", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("deploy", help="Prefect server + process worker + prefect.yaml's deployments (default)")
    ui = commands.add_parser("ui", help="MLflow UI and Prefect UI for the demo's stores")
    ui.add_argument("--mlflow-store", default=f"sqlite:///{Path('data/demo/mlflow.db').resolve()}")
    ui.add_argument("--prefect-home", type=Path, default=Path(".prefect"))
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.add_argument("--prefect-port", type=int, default=4200)
    args = parser.parse_args(argv)
    if args.command == "ui":
        return serve_ui(args.mlflow_store, args.prefect_home, args.mlflow_port, args.prefect_port)
    return deploy()


if __name__ == "__main__":
    sys.exit(main())
