"""The reference scorer: an OpenAI-compatible `/v1/chat/completions` server on loopback.

It is a stand-in, NOT a vision-language model. It answers with `tasks.difficulty`'s
formula (exposure, contrast, blur, noise, clutter), adds seeded noise scaled by
`temperature` to mimic a VLM's stochasticity, and answers in the JSON schema the prompt
asks for, with realistic `usage` token counts. It lets the embedded default and the tests
exercise the real gateway path (litellm over HTTP) offline, including faults: 429 with
Retry-After, 500, hangs past the client timeout, malformed JSON, prose and out-of-range
scores, and the reply shapes real models produce (JSON in a code fence, JSON followed by
prose, near-JSON, a reply cut at the length limit, a refusal) and a gateway that rejects
the request with HTTP 400, each at a configured rate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from tasks.difficulty import assess
from tasks.errors import ConfigError
from tasks.loopback import LoopbackServer

log = logging.getLogger(__name__)

IMAGE_TILE = 512  # OpenAI-style vision accounting: 85 base tokens + 170 per 512-px tile
BAD_REQUEST_MESSAGE = "Invalid parameter: 'response_format' must be one of 'json_object', 'text'."
REFUSAL_TEXT = "I'm sorry, but I can't help with rating this image."


@dataclass(frozen=True)
class FaultPlan:
    """Fraction of requests answered with each fault (drawn independently per request)."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    hang: float = 0.0
    malformed_json: float = 0.0
    prose: float = 0.0
    out_of_range: float = 0.0
    # Reply shapes real models produce. Drawn after the faults above, so adding them left
    # every existing plan's draws as they were.
    fenced: float = 0.0  # the valid JSON inside a ```json … ``` code fence
    trailing_prose: float = 0.0  # the valid JSON, then a sentence of prose
    near_json: float = 0.0  # single quotes and a trailing comma: not JSON
    length_cut: float = 0.0  # cut at the request's max_tokens: finish_reason "length"
    refusal: float = 0.0  # no content; `message.refusal` holds REFUSAL_TEXT
    bad_request: float = 0.0  # HTTP 400 with an OpenAI-style error body (param response_format)
    retry_after_s: int = 1
    hang_s: float = 30.0
    seed: int = 0
    failing_models: tuple[str, ...] = ()  # always answer 500, to exercise provider fallback
    bad_request_message: str = BAD_REQUEST_MESSAGE
    # A careless gateway's 400 that echoes the bearer key and the start of the image data URI,
    # to prove neither reaches a failure reason or a log line.
    echo_request_in_errors: bool = False


@dataclass(frozen=True)
class ScorerSettings:
    latency_s: float = 0.0  # from a request's arrival to its reply, the scorer's own image work included
    faults: FaultPlan = field(default_factory=FaultPlan)
    fixed_difficulty: float | None = None  # answer this score for every image (no formula, no noise)
    report_usage: bool = True  # False: answer without a `usage` block, as some gateways do


_OUTCOMES = (
    "rate_limit",
    "server_error",
    "hang",
    "malformed_json",
    "prose",
    "out_of_range",
    "fenced",
    "trailing_prose",
    "near_json",
    "length_cut",
    "refusal",
    "bad_request",
)


def _image_url(messages: list[dict]) -> str:
    for message in messages:
        for part in message.get("content") if isinstance(message.get("content"), list) else []:
            if part.get("type") == "image_url":
                return part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
    return ""


def _image_from_messages(messages: list[dict]) -> tuple[bytes, str]:
    text_parts, image_bytes = [], b""
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            text_parts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                text_parts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
                image_bytes = base64.b64decode(url.split(",", 1)[1])
    return image_bytes, "\n".join(text_parts)


def _completion(
    model: str,
    content: str | None,
    prompt_tokens: int,
    finish_reason: str = "stop",
    refusal: str | None = None,
    completion_tokens: int | None = None,
) -> dict:
    if completion_tokens is None:
        completion_tokens = max(1, math.ceil(len(content or refusal or "") / 4))
    message = {"role": "assistant", "content": content} | ({"refusal": refusal} if refusal else {})
    return {
        "id": f"chatcmpl-ref-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "finish_reason": finish_reason, "message": message},
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def create_app(
    settings: ScorerSettings, stats: Counter, answered: list[tuple[str, int]], arrivals: list[float] | None = None
) -> FastAPI:
    """The ASGI app. `stats` counts requests by outcome (plus `in_flight` and its
    `peak_in_flight`, and the `prompt_tokens` and `completion_tokens` of every completion
    returned); `answered` lists (image sha256[:16], seed) for every completion returned,
    i.e. every call a real provider would bill, a hung one included; `arrivals` gets the
    `time.monotonic()` of every request received."""
    app = FastAPI(title="tailcal reference scorer (not a VLM)")
    faults = settings.faults
    draw = random.Random(faults.seed)
    lock = threading.Lock()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "reference-vlm", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        with lock:
            stats["in_flight"] += 1
            stats["peak_in_flight"] = max(stats["peak_in_flight"], stats["in_flight"])
        try:
            return await answer(request)
        finally:
            with lock:
                stats["in_flight"] -= 1

    async def answer(request: Request):
        # A provider's latency runs from the request to the reply, its own work included: the
        # scorer answers latency_s after the request arrived, with its image work done inside
        # that time (before, the work came on top, and a bench's bound of concurrency ÷ latency
        # was 5–10 % more than the scorer itself allowed).
        answer_at = time.monotonic() + settings.latency_s
        body = await request.json()
        with lock:
            stats["requests"] += 1
            if arrivals is not None:
                arrivals.append(time.monotonic())
            roll = draw.random()
        if body.get("model") in faults.failing_models:
            await _until(answer_at)
            stats["model_down"] += 1
            return JSONResponse({"error": {"message": "model unavailable (injected)"}}, status_code=500)
        edges = np.cumsum(
            [
                faults.rate_limit,
                faults.server_error,
                faults.hang,
                faults.malformed_json,
                faults.prose,
                faults.out_of_range,
                faults.fenced,
                faults.trailing_prose,
                faults.near_json,
                faults.length_cut,
                faults.refusal,
                faults.bad_request,
            ]
        )
        outcome = [*_OUTCOMES, "ok"][int(np.searchsorted(edges, roll, side="right"))]
        if outcome in ("rate_limit", "server_error", "hang", "bad_request"):
            await _until(answer_at)
        if outcome == "rate_limit":
            stats["rate_limit"] += 1
            return JSONResponse(
                {"error": {"message": "rate limited (injected)", "type": "rate_limit_error", "code": "429"}},
                status_code=429,
                headers={"Retry-After": str(faults.retry_after_s)},
            )
        if outcome == "server_error":
            stats["server_error"] += 1
            return JSONResponse({"error": {"message": "injected failure", "type": "server_error"}}, status_code=500)
        if outcome == "hang":
            stats["hang"] += 1
            await asyncio.sleep(faults.hang_s)
        if outcome == "bad_request":  # a provider checks the parameters before it looks at the image
            stats["bad_request"] += 1
            message = faults.bad_request_message
            if faults.echo_request_in_errors:
                key = request.headers.get("authorization", "").removeprefix("Bearer ")
                url = _image_url(body.get("messages", []))
                message = f"{message} (request from key {key} with image {url[:120]})"
            error = {"message": message, "type": "invalid_request_error", "param": "response_format", "code": None}
            return JSONResponse({"error": error}, status_code=400)

        image_bytes, text = _image_from_messages(body.get("messages", []))
        try:  # in a worker thread: one request's image work does not hold up the others' replies
            image, assessment = await asyncio.to_thread(_decode_and_assess, image_bytes)
        except Exception as exc:  # any undecodable payload is the client's error, as a provider would say
            await _until(answer_at)
            stats["bad_request"] += 1
            message = f"could not decode image: {exc.__class__.__name__}"
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=400)
        seed = body.get("seed") or 0
        temperature = float(body.get("temperature") if body.get("temperature") is not None else 1.0)
        digest = hashlib.sha256(image_bytes).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big") ^ (int(seed) * 0x9E3779B97F4A7C15 & (2**64 - 1)))
        difficulty = min(1.0, max(0.0, assessment.difficulty + rng.gauss(0.0, 0.06 * temperature)))
        if settings.fixed_difficulty is not None:
            difficulty = settings.fixed_difficulty
        content: str | None = json.dumps({"difficulty": round(difficulty, 4), "factors": list(assessment.factors)})
        finish_reason, refusal, completion_tokens = "stop", None, None
        if outcome == "malformed_json":
            content = content[: len(content) // 2]
        elif outcome == "prose":
            content = f"This frame looks moderately hard; I would rate it about {difficulty:.2f}."
        elif outcome == "out_of_range":
            content = json.dumps({"difficulty": 1.0 + rng.random(), "factors": []})
        elif outcome == "fenced":
            content = f"```json\n{content}\n```"
        elif outcome == "trailing_prose":
            content = f"{content}\nThe frame is dark and slightly blurred."
        elif outcome == "near_json":
            content = f"{{'difficulty': {round(difficulty, 4)}, 'factors': {list(assessment.factors)!r},}}"
        elif outcome == "length_cut":  # the model spent max_tokens before closing the object
            content, finish_reason = content[: len(content) // 2], "length"
            completion_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        elif outcome == "refusal":
            content, refusal = None, REFUSAL_TEXT
        if outcome != "hang":  # counted when it began
            stats[outcome] += 1
        tiles = math.ceil(image.width / IMAGE_TILE) * math.ceil(image.height / IMAGE_TILE)
        prompt_tokens = math.ceil(len(text) / 4) + 85 + 170 * tiles
        model = body.get("model", "reference-vlm")
        completion = _completion(model, content, prompt_tokens, finish_reason, refusal, completion_tokens)
        with lock:  # what a provider bills: the call, and its tokens (reported or not)
            answered.append((digest.hex()[:16], int(seed)))
            stats["prompt_tokens"] += completion["usage"]["prompt_tokens"]
            stats["completion_tokens"] += completion["usage"]["completion_tokens"]
        if not settings.report_usage:
            del completion["usage"]
        await _until(answer_at)
        return completion

    return app


async def _until(moment: float) -> None:
    """Sleep until `time.monotonic()` reaches `moment` (at once when it has)."""
    if (remaining := moment - time.monotonic()) > 0:
        await asyncio.sleep(remaining)


def _decode_and_assess(image_bytes: bytes):
    image = Image.open(io.BytesIO(image_bytes))
    image.load()
    return image, assess(image)


class ReferenceScorer(LoopbackServer):
    """Runs the scorer in a background thread on 127.0.0.1 (an ephemeral port by default).
    `stats` counts requests by outcome; `answered` lists the (image, seed) pairs billed;
    `arrivals` the monotonic time of each request."""

    def __init__(self, settings: ScorerSettings | None = None, port: int = 0) -> None:
        self.settings = settings or ScorerSettings()
        self.stats: Counter = Counter()
        self.answered: list[tuple[str, int]] = []
        self.arrivals: list[float] = []
        app = create_app(self.settings, self.stats, self.answered, self.arrivals)
        super().__init__(app, "reference scorer", port, timeout_keep_alive=30)

    @property
    def base_url(self) -> str:
        return f"{super().base_url}/v1"


def serve(port: int = 8808, latency_s: float = 0.0) -> None:
    """Run the reference scorer (a stand-in, not a VLM) on 127.0.0.1 until Ctrl-C.

    Point `gateway.url` at the address it logs to score through it like a real gateway.

    Args:
        port: TCP port on 127.0.0.1; 0 picks a free one.
        latency_s: Seconds from a request's arrival to its reply, to mimic a provider's latency
            (the scorer's own work is done within them).
    """
    if not 0 <= port <= 65535 or latency_s < 0:
        raise ConfigError(f"--port {port} / --latency-s {latency_s}: the port must be 0–65535 and the latency ≥ 0")
    server = ReferenceScorer(ScorerSettings(latency_s=latency_s), port=port)
    server.start()
    log.info("reference scorer (not a VLM) listening on %s", server.base_url)
    server.wait_for_interrupt()
