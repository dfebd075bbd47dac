"""The LiteLLM proxy (`litellm --config …`) as a real gateway in front of the reference scorer.

tailcal reaches it as it reaches any hosted gateway: `gateway.url` is the proxy's URL, and
the key is in the environment variable `gateway.key_env` names. The proxy runs from its own
pinned environment (`tasks.testing.gateway_env`), in `offline_environment()`, with:
- one deployment per model name, `openai/<name>` at the upstream's base URL;
- a master key (`LITELLM_MASTER_KEY`) and, optionally, virtual keys with an rpm limit each,
  checked by `proxy_auth.py` (a proxy without a database knows no virtual keys);
- no retries of its own (`router_settings.num_retries: 0`): tailcal's client owns retries,
  so each is counted once and the proxy's Retry-After reaches it;
- `LITELLM_MODE=PRODUCTION`, so it reads no `.env` file from its working directory.

    LITELLM_MASTER_KEY=sk-… make gateway       # the proxy on :4000, the scorer behind it

Measured on the shared 2-core machine: the proxy answers 5–18 s after it is started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from tasks.errors import ServiceError
from tasks.loopback import free_port
from tasks.services import ServerProcess
from tasks.testing import proxy_auth
from tasks.testing.gateway_env import ensure_gateway_env

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0  # measured 5–18 s on the shared 2-core machine; room for a loaded one
UPSTREAM_KEY = "reference-scorer-accepts-any-key"  # the reference scorer checks no key
# uvicorn's access log line for each completion the proxy answered, with its status
_ACCESS_LINE = re.compile(r'"POST /(?:v1/)?chat/completions HTTP/[\d.]+" (\d{3})')


@dataclass(frozen=True)
class VirtualKey:
    """A key the proxy accepts besides its master key, with the proxy's rpm limit for it."""

    key: str = field(repr=False)  # a repr (a test's failure report, a log line) never shows a key
    alias: str = ""
    rpm: int | None = None


@dataclass
class LiteLLMProxy:
    """The proxy on 127.0.0.1: `routes` maps each model name it serves to the OpenAI-compatible
    base URL that answers for it. Its config, key check and log live in `work_dir`. A context
    manager; `start_s` is how long it took to answer.
    """

    routes: Mapping[str, str]
    master_key: str = field(repr=False)
    work_dir: Path = Path("data/gateway")
    virtual_keys: Sequence[VirtualKey] = ()
    port: int = 0
    start_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.master_key:
            raise ServiceError("the LiteLLM proxy needs a master key: set LITELLM_MASTER_KEY")
        self.port = self.port or free_port()
        self.log_path = self.work_dir / "proxy.log"
        self._process: ServerProcess | None = None

    def __enter__(self) -> LiteLLMProxy:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def config(self) -> dict:
        """The proxy's config.yaml: no key in it, only where to find them."""
        return {
            "model_list": [
                {
                    "model_name": name,
                    "litellm_params": {"model": f"openai/{name}", "api_base": upstream, "api_key": UPSTREAM_KEY},
                }
                for name, upstream in self.routes.items()
            ],
            "router_settings": {"num_retries": 0},
            "general_settings": {
                "master_key": f"os.environ/{proxy_auth.MASTER_KEY_ENV}",
                "custom_auth": "tailcal_proxy_auth.user_api_key_auth",
            },
        }

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        litellm = ensure_gateway_env()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.work_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        # LiteLLM loads `custom_auth` from a module file beside its config.
        shutil.copyfile(Path(proxy_auth.__file__), self.work_dir / "tailcal_proxy_auth.py")
        keys = {k.key: {"alias": k.alias, "rpm": k.rpm} for k in self.virtual_keys}
        # DATABASE_URL (a stack's PostgreSQL, say) would make the proxy set up Prisma, whose engines
        # download at start: this proxy keeps no state, so it gets none.
        inherited = {name: value for name, value in os.environ.items() if name not in {"DATABASE_URL", "DIRECT_URL"}}
        env = {
            **inherited,
            proxy_auth.MASTER_KEY_ENV: self.master_key,
            proxy_auth.KEYS_ENV: json.dumps(keys),
            "LITELLM_MODE": "PRODUCTION",
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
        }
        command = [str(litellm), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(self.port)]
        self._process = ServerProcess("LiteLLM proxy", command, env=env, cwd=self.work_dir, log_path=self.log_path)
        self._process.start()
        try:
            self.start_s = self._process.wait_until_answers(
                f"http://127.0.0.1:{self.port}/health/liveliness", timeout_s
            )
        except BaseException:
            self.stop()
            raise
        log.info("LiteLLM proxy at %s for %s (answered in %.1f s)", self.base_url, ", ".join(self.routes), self.start_s)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def cpu_s(self) -> float:
        """CPU seconds the proxy (and any process it started) has used so far."""
        if self._process is None or self._process.pid is None:
            return 0.0
        root = psutil.Process(self._process.pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def completions(self) -> Counter:
        """Chat completions the proxy answered, by HTTP status, from its own access log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return Counter(int(status) for status in _ACCESS_LINE.findall(text))


def main(argv: Sequence[str] | None = None) -> int:
    """`make gateway`: the reference scorer and the LiteLLM proxy in front of it, until Ctrl-C."""
    from tasks.testing.reference_scorer import ReferenceScorer, ScorerSettings

    parser = argparse.ArgumentParser(prog="python -m tasks.testing.litellm_proxy", description=main.__doc__)
    parser.add_argument("--port", type=int, default=4000, help="the proxy's port on 127.0.0.1")
    parser.add_argument("--scorer-port", type=int, default=0, help="the reference scorer's port (0: a free one)")
    parser.add_argument(
        "--latency-s", type=float, default=0.0, help="seconds from a request's arrival at the scorer to its reply"
    )
    parser.add_argument("--model", action="append", help="model name to serve (default: reference-vlm)")
    parser.add_argument("--work-dir", type=Path, default=Path("data/gateway"), help="its config and log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops both, as Ctrl-C does
    master_key = os.environ.get(proxy_auth.MASTER_KEY_ENV, "")
    try:
        with (
            ReferenceScorer(ScorerSettings(latency_s=args.latency_s), port=args.scorer_port) as scorer,
            LiteLLMProxy(
                {name: scorer.base_url for name in args.model or ["reference-vlm"]},
                master_key,
                args.work_dir,
                port=args.port,
            ),
        ):
            url = f"http://127.0.0.1:{args.port}/v1"
            print(f"LiteLLM proxy {url} in front of the reference scorer {scorer.base_url}")
            print(f"point gateway.url at {url} and export TAILCAL_GATEWAY_KEY=<the master key>")
            print(f"proxy log: {args.work_dir / 'proxy.log'}; Ctrl-C stops both", flush=True)
            scorer.wait_for_interrupt()
    except ServiceError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the proxy was still starting: it is stopped already
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
