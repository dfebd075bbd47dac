"""Run the inference service with uvicorn: in a background thread (tests, bench) or as a CLI.

python -m tasks.serving --ir-dir data/demo/mlartifacts/<run_id>/artifacts/ir --port 8810
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from tasks.config import ServingConfig, load_config
from tasks.loopback import LoopbackServer
from tasks.serving.app import create_app
from tasks.serving.engines import load_engines, warm_up

logger = logging.getLogger(__name__)


def build_app(config: ServingConfig) -> FastAPI:
    """Load and warm every tier found, then wire the app.

    Post-processing (torch NMS on ~1000 candidates) runs in the request threads; with
    torch's default intra-op pool each small op fans out over every core and the threads
    fight: measured 5× slower under load than with one thread per request.
    """
    import torch

    torch.set_num_threads(1)
    engines = load_engines(config)
    return create_app(engines, config, warm_up(engines, config.warmup_requests))


class BackgroundServer(LoopbackServer):
    """The inference service on 127.0.0.1 in a daemon thread (an ephemeral port by default)."""

    def __init__(self, app: FastAPI, port: int = 0) -> None:
        super().__init__(app, "inference service", port)


def _tier_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or name not in ("int8", "mixed", "fp16"):
        raise argparse.ArgumentTypeError(f"--tier wants int8=PATH, mixed=PATH or fp16=PATH, got {text!r}")
    return name, Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="tailcal precision-routed detector service")
    parser.add_argument("--config", default=None, help="YAML config; its `serving` section is used")
    parser.add_argument("--ir-dir", type=Path, default=None, help="directory holding the tiers' IRs")
    parser.add_argument("--tier", type=_tier_path, action="append", default=[], help="int8|mixed|fp16=PATH; only these")
    parser.add_argument("--infer-requests", type=int, default=None, help="parallel OpenVINO requests per tier")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per OpenVINO request")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8810)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config).serving if args.config else ServingConfig()
    update: dict = {}
    if args.ir_dir:
        update["ir_dir"] = args.ir_dir
    if args.tier:
        update |= {"ir_dir": None, "int8_ir": None, "mixed_ir": None, "fp16_ir": None}
        update |= {f"{name}_ir": path for name, path in args.tier}
    if args.infer_requests:
        update["infer_requests_per_tier"] = args.infer_requests
    if args.threads:
        update["threads_per_request"] = args.threads
    config = ServingConfig.model_validate(config.model_dump() | update)
    uvicorn.run(build_app(config), host=args.host, port=args.port, log_level="warning", access_log=False)
