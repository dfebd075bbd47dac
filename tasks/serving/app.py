"""The inference service: `POST /v1/detect` (image bytes in, boxes out), routed across precision tiers.

Per request: decode → difficulty estimate → `choose_tier` → infer on that tier; if it
raises, the next more precise tier answers and both are reported in headers. Tier
latency estimates (EWMA, seeded by the warm-up) let `X-Max-Latency-Ms` steer the choice.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tasks.config import ServingConfig
from tasks.detection.labels import Categories
from tasks.detection.postprocess import Detections
from tasks.difficulty import assess
from tasks.imaging import ImageDecodeError, decode_rgb
from tasks.serving.engines import Engine
from tasks.serving.metrics import ServingMetrics
from tasks.serving.routing import LatencyTracker, RoutingError, choose_tier, next_higher, ordered

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """The client sent something the service cannot serve (HTTP 4xx); the message says what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Served:
    tier: str
    reason: str
    difficulty: float
    fallback_from: str | None
    detections: Detections
    service_ms: float


def _header_number(request: Request, name: str, cast):
    raw = request.headers.get(name)
    if raw is None or raw == "":
        return None
    try:
        return cast(raw)
    except ValueError:
        raise RequestError(400, f"{name} must be a number, got {raw!r}") from None


def _decode(body: bytes, config: ServingConfig) -> np.ndarray:
    if not body:
        raise RequestError(400, "empty body: POST the encoded image (JPEG or PNG) as the request body")
    if len(body) > config.max_image_bytes:
        raise RequestError(413, f"image is {len(body)} bytes, the limit is {config.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(body)) as probe:
            width, height = probe.size
    except Exception as exc:  # Pillow raises many types for undecodable input; all are the client's error
        raise RequestError(400, f"could not decode the image ({exc.__class__.__name__}): send JPEG or PNG") from None
    if width * height > config.max_image_pixels:
        raise RequestError(413, f"image is {width}×{height}, above {config.max_image_pixels} pixels")
    try:  # the header probe above reads no pixels: a cut or unsupported body fails only here
        return decode_rgb(body)
    except ImageDecodeError as exc:
        raise RequestError(400, f"could not decode the image: {exc}") from None


class Router:
    """Routing, inference with fallback, and metrics; the FastAPI app is a thin shell around it."""

    def __init__(self, engines: Mapping[str, Engine], config: ServingConfig, metrics: ServingMetrics) -> None:
        self.tiers = ordered(engines)
        if not self.tiers:
            raise RoutingError("no tier engines given")
        self.engines = dict(engines)
        self.config = config
        self.metrics = metrics
        self.latency = LatencyTracker(config.latency_ewma_alpha)

    def seed_latency(self, seeds: Mapping[str, float]) -> None:
        for tier, ms in seeds.items():
            self.latency.seed(tier, ms)
            self.metrics.tier_latency_ms.labels(tier).set(ms)

    def serve(self, image: np.ndarray, priority: int | None, max_latency_ms: float | None) -> Served:
        """Route and run one decoded image (any size: each tier fits it to its input, and the
        boxes come back in the image's own pixels)."""
        started = time.perf_counter()
        difficulty = assess(image).difficulty
        estimates = self.latency.snapshot()
        try:
            decision = choose_tier(
                priority, max_latency_ms, difficulty, {t: estimates.get(t) for t in self.tiers}, self.config
            )
        except RoutingError as exc:
            raise RequestError(400, str(exc)) from None
        self.metrics.routing_seconds.observe(time.perf_counter() - started)
        self.metrics.difficulty.observe(difficulty)
        tier, fallback_from = decision.tier, None
        while True:
            infer_started = time.perf_counter()
            try:
                detections = self.engines[tier].infer(image)
                break
            except Exception as exc:  # any tier failure is retried one tier up, and counted
                self.metrics.upstream_errors.labels(tier).inc()
                higher = next_higher(tier, self.tiers)
                logger.warning("tier %s failed (%s: %s); next tier: %s", tier, type(exc).__name__, exc, higher)
                if higher is None:
                    raise RequestError(503, f"tier {tier} failed and no more precise tier is loaded") from exc
                self.metrics.fallbacks.labels(tier, higher).inc()
                fallback_from = fallback_from or tier
                tier = higher
        service_ms = (time.perf_counter() - infer_started) * 1e3
        self.metrics.tier_latency_ms.labels(tier).set(self.latency.observe(tier, service_ms))
        self.metrics.inference_seconds.labels(tier).observe(service_ms / 1e3)
        self.metrics.requests.labels(tier).inc()
        return Served(tier, decision.reason, difficulty, fallback_from, detections, service_ms)


def answered(detections: Detections, min_score: float, max_detections: int | None) -> Detections:
    """The detections a request is answered with: score ≥ `min_score`, then the `max_detections`
    highest-scoring (all when None), highest first. Routing never reads this cut: it applies to
    the answer only (`serving.min_score`, `serving.max_detections`)."""
    order = np.argsort(-detections.scores, kind="stable")
    order = order[detections.scores[order] >= min_score][:max_detections]
    return Detections(detections.boxes[order], detections.scores[order], detections.labels[order])


def create_app(
    engines: Mapping[str, Engine],
    config: ServingConfig,
    latency_seeds: Mapping[str, float] | None = None,
    categories: Categories | None = None,
) -> FastAPI:
    """The ASGI app over already-loaded tier engines (tests pass fakes; the CLI passes OpenVINO ones).

    Each detection is `{"box": [x1, y1, x2, y2] in the image's own pixels, "score", "label"}`
    (label: the detector's 0-based class index), plus `"category_id"` and `"category"` (the
    COCO id and name evaluation scored it as) when `categories` is given; highest score first,
    cut by `config.min_score` and `config.max_detections`.
    """
    metrics = ServingMetrics.create()
    router = Router(engines, config, metrics)
    router.seed_latency(latency_seeds or {})
    app = FastAPI(title="tailcal precision-routed detector")

    @app.post("/v1/detect")
    async def detect(request: Request):
        started = time.perf_counter()
        try:
            priority = _header_number(request, "X-Priority", int)
            max_latency = _header_number(request, "X-Max-Latency-Ms", float)
            body = await request.body()
            served = await run_in_threadpool(lambda: router.serve(_decode(body, config), priority, max_latency))
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        metrics.request_seconds.labels(served.tier).observe(time.perf_counter() - started)
        det = answered(served.detections, config.min_score, config.max_detections)
        body = {
            "tier": served.tier,
            "reason": served.reason,
            "difficulty": round(served.difficulty, 4),
            "fallback_from": served.fallback_from,
            "detections": [
                {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4), "label": int(label)}
                | (categories.describe(int(label)) if categories else {})
                for box, score, label in zip(det.boxes, det.scores, det.labels, strict=True)
            ],
        }
        headers = {
            "X-Tailcal-Tier": served.tier,
            "X-Tailcal-Reason": served.reason,
            "X-Tailcal-Difficulty": f"{served.difficulty:.4f}",
            "X-Tailcal-Service-Ms": f"{served.service_ms:.2f}",
        }
        if served.fallback_from:
            headers["X-Tailcal-Fallback-From"] = served.fallback_from
        return JSONResponse(body, headers=headers)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def health() -> dict:
        return {"tiers": router.tiers, "latency_ms": router.latency.snapshot()}

    return app
