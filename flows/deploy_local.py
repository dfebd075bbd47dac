"""A local Prefect server + process worker with this project's deployments (`make deploy`).

Workers refuse the ephemeral API, so deployments need a real server. This starts one on
127.0.0.1, creates the `tailcal-process` work pool, runs `prefect deploy --all` from the
project directory (the one holding prefect.yaml, the working directory by default) and
starts a worker; the e2e deployment test uses the same class.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

WORK_POOL = "tailcal-process"


class LocalPrefect:
    def __init__(self, home: Path, port: int = 4200, project: Path | None = None) -> None:
        project = (project or Path.cwd()).resolve()
        if not (project / "prefect.yaml").exists():
            raise FileNotFoundError(
                f"no prefect.yaml in {project}: run from the tailcal project directory (where prefect.yaml is)"
            )
        self.project = project
        self.port = port
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home.resolve()),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "TAILCAL_CHECKOUT": str(project),
        }
        self._processes: list[subprocess.Popen] = []
        self._prefect = [sys.executable, "-m", "prefect"]

    def __enter__(self) -> LocalPrefect:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a prefect CLI command against this server; raises with its output on failure."""
        result = subprocess.run(
            [*self._prefect, *args], env=self.env, cwd=self.project, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def start(self) -> None:
        server = [*self._prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self._spawn(server, "server.log")
        self._wait_healthy(timeout_s=180)
        self.prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
        self.prefect("--no-prompt", "deploy", "--all")
        self._spawn([*self._prefect, "worker", "start", "--pool", WORK_POOL], "worker.log")

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self._processes.clear()

    def _spawn(self, command: list[str], log_name: str) -> None:
        log_path = Path(self.env["PREFECT_HOME"]) / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self._processes.append(subprocess.Popen(command, env=self.env, cwd=self.project, stdout=log, stderr=log))

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self._processes[0].poll() is not None:
                raise RuntimeError(f"prefect server exited; see {self.env['PREFECT_HOME']}/server.log")
            time.sleep(1)
        raise RuntimeError(f"prefect server did not answer on {self.api_url} within {timeout_s:.0f} s")


def main() -> None:
    with LocalPrefect(Path.cwd() / ".prefect-server") as local:
        print(f"Prefect UI  http://127.0.0.1:{local.port}   (API {local.api_url})")
        print("deployments: calibration-release-cycle/release-cycle (weekly), calibration-ablation/ablation")
        print(f"in another shell:  export PREFECT_API_URL={local.api_url}")
        print("  .venv/bin/prefect deployment run 'calibration-release-cycle/release-cycle' \\")
        print("      --param config_path=configs/demo.yaml --param strategy=random --param k=256")
        print("worker running; Ctrl-C stops the worker and the server")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
