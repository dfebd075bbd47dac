"""Run the inference service with uvicorn: in a background thread (tests, bench) or as a command.

tailcal serve --ir-dir data/demo/mlartifacts/<run_id>/artifacts/ir --port 8810
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from tasks.config import ServingConfig, load_serving, section_with
from tasks.errors import ConfigError, ServiceError
from tasks.loopback import LoopbackServer

if TYPE_CHECKING:  # the app loads torch and OpenVINO (seconds): `tailcal --help` must not wait for them
    from fastapi import FastAPI

logger = logging.getLogger(__name__)


def build_app(config: ServingConfig) -> FastAPI:
    """Load and warm every tier found, then wire the app.

    Post-processing (torch NMS on ~1000 candidates) runs in the request threads; with
    torch's default intra-op pool each small op fans out over every core and the threads
    fight: measured 5× slower under load than with one thread per request.
    """
    import torch

    from tasks.serving.app import create_app
    from tasks.serving.engines import load_categories, load_engines, resolve_tier_paths, warm_up

    torch.set_num_threads(1)
    categories = load_categories(config, resolve_tier_paths(config))
    engines = load_engines(config)
    return create_app(engines, config, warm_up(engines, config.warmup_requests), categories)


def _check_listen_address(host: str, port: int) -> None:
    """Refuse a port that cannot be listened on before seconds go into loading the tiers."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port: use 1–65535")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServiceError(
                f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port or --host"
            ) from None


class BackgroundServer(LoopbackServer):
    """The inference service on 127.0.0.1 in a daemon thread (an ephemeral port by default)."""

    def __init__(self, app: FastAPI, port: int = 0) -> None:
        super().__init__(app, "inference service", port)


def serve(
    config_path: str | None = None,
    ir_dir: Path | None = None,
    int8_ir: Path | None = None,
    mixed_ir: Path | None = None,
    fp16_ir: Path | None = None,
    infer_requests: int | None = None,
    threads: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8810,
) -> None:
    """Serve POST /v1/detect, routing each image to the int8, mixed or fp16 IR; runs until Ctrl-C.

    Args:
        config_path: YAML config whose `serving` section is used (default: the built-in defaults).
        ir_dir: Directory holding a release's IRs (detector_int8.xml, detector_fp16.xml, …).
        int8_ir: The INT8 IR; with any of the three tier options, only the tiers named are served.
        mixed_ir: The accuracy-controlled IR (the mixed tier).
        fp16_ir: The FP16 IR.
        infer_requests: Parallel OpenVINO requests per tier.
        threads: CPU threads per OpenVINO request.
        host: Address to listen on.
        port: TCP port to listen on.
    """
    _check_listen_address(host, port)
    config = load_serving(config_path) if config_path else ServingConfig()
    update: dict = {}
    if ir_dir:
        update["ir_dir"] = ir_dir
    tiers = {"int8_ir": int8_ir, "mixed_ir": mixed_ir, "fp16_ir": fp16_ir}
    if any(tiers.values()):
        update |= {"ir_dir": None} | tiers
    if infer_requests is not None:  # 0 is a value to refuse, not "not given"
        update["infer_requests_per_tier"] = infer_requests
    if threads is not None:
        update["threads_per_request"] = threads
    source = "the command line (--infer-requests sets serving.infer_requests_per_tier, --threads threads_per_request)"
    config = section_with(config, source, **update)
    app = build_app(config)
    logger.info("serving on http://%s:%d/v1/detect", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
