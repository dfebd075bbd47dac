"""The LiteLLM proxy's own pinned environment, `.venv-gateway`, built from requirements-gateway.lock.

`litellm[proxy]` 1.106.2 (the litellm the project pins) needs gunicorn < 24, and the
project's tree holds gunicorn 26.2.0, so the proxy runs from a virtual environment of its
own. `make gateway-env`, `make gateway`, the proxy tests and `bench/scoring.py` all build it
through `ensure_gateway_env`, never by hand:

    .venv/bin/python -m tasks.testing.gateway_env

It is built once and reused while the lock and the Python version are unchanged (a stamp
in the environment records both); a build that failed halfway is discarded and redone.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

from tasks.errors import ServiceError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_VENV = ROOT / ".venv-gateway"
GATEWAY_LOCK = ROOT / "requirements-gateway.lock"
STAMP = ".tailcal-gateway-env"
PYTHON = (3, 11)  # the lock was resolved for it
BUILD_TIMEOUT_S = 1200


def litellm_executable(venv: Path = GATEWAY_VENV) -> Path:
    """The `litellm` command (the proxy's CLI) inside the environment."""
    return venv / "bin" / "litellm"


def _fingerprint(lock: Path) -> str:
    python = ".".join(map(str, sys.version_info[:3]))
    return f"python {python}; {lock.name} sha256 {hashlib.sha256(lock.read_bytes()).hexdigest()}"


def is_current(venv: Path = GATEWAY_VENV, lock: Path = GATEWAY_LOCK) -> bool:
    """Whether the environment exists and was built from this lock with this Python."""
    stamp = venv / STAMP
    return stamp.exists() and stamp.read_text() == _fingerprint(lock) and litellm_executable(venv).exists()


def ensure_gateway_env(venv: Path = GATEWAY_VENV, lock: Path = GATEWAY_LOCK) -> Path:
    """Build `venv` from `lock` unless it is current; return the proxy's `litellm` command.

    Concurrent callers (parallel test sessions, a bench beside a test) wait on a file lock
    and build once. Raises ServiceError naming the failed step and what to do (usually: the
    package index is unreachable).
    """
    if sys.version_info[:2] != PYTHON:
        raise ServiceError(
            f"{lock.name} is resolved for Python {'.'.join(map(str, PYTHON))}, not {sys.version.split()[0]}: "
            "run this with the project's .venv/bin/python"
        )
    with FileLock(str(venv) + ".lock"):
        if is_current(venv, lock):
            return litellm_executable(venv)
        log.info("building the LiteLLM proxy environment %s from %s (about a minute)", venv, lock.name)
        shutil.rmtree(venv, ignore_errors=True)  # a half-built environment is not reused
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        _step("create the virtual environment", [sys.executable, "-m", "venv", str(venv)])
        # --no-deps: the lock pins the whole tree, so nothing unpinned may come in; pip check proves it complete.
        _step(f"install {lock.name}", [*pip, "install", "--quiet", "--no-deps", "-r", str(lock)])
        _step(f"check {lock.name} is a complete tree", [*pip, "check"])
        (venv / STAMP).write_text(_fingerprint(lock))
        return litellm_executable(venv)


def _step(doing: str, command: list[str]) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ServiceError(
            f"building the gateway environment: '{doing}' took over {BUILD_TIMEOUT_S} s; "
            "check that the package index is reachable, then rerun `make gateway-env`"
        ) from None
    if result.returncode != 0:
        # pip's own warnings (an unusable extra index, say) are not why it failed
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        output = " / ".join([line for line in lines if not line.startswith("WARNING:")][-5:] or lines[-5:])
        raise ServiceError(
            f"building the gateway environment: '{doing}' failed (exit {result.returncode}): {output} — "
            "check that the package index is reachable, then rerun `make gateway-env`"
        )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        executable = ensure_gateway_env()
    except ServiceError as error:
        print(f"gateway-env: {error}", file=sys.stderr)
        return 2
    print(f"LiteLLM proxy environment ready: {executable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
