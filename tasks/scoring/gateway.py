"""The VLM gateway client, on litellm's Router (fallbacks, retry policy, Retry-After).

One request per image: system + user text and the image as a JPEG data URI, downsized to
`max_image_side` to bound image tokens; `response_format` carries the template's JSON
schema. Replies are parsed strictly: anything that is not a JSON object with a finite
`difficulty` in [0, 1] and a list of string `factors` is a `ReplyError`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass

from PIL import Image

from tasks.config import GatewayConfig, ModelPrice
from tasks.errors import GatewayError
from tasks.scoring.offline_litellm import RetryPolicy, Router, litellm
from tasks.scoring.prompts import PromptTemplate

log = logging.getLogger(__name__)
litellm.suppress_debug_info = True
logging.getLogger("LiteLLM").setLevel(logging.ERROR)
logging.getLogger("LiteLLM Router").setLevel(logging.WARNING)

IMAGE_TILE = 512
INPUT_SAFETY = 1.5  # providers count image tokens differently; reserve generously


class ReplyError(ValueError):
    """The model answered, but not with the JSON the schema asks for."""


@dataclass(frozen=True)
class Reply:
    difficulty: float
    factors: tuple[str, ...]
    model: str
    input_tokens: int
    output_tokens: int
    cost_eur: float
    latency_s: float


@dataclass(frozen=True)
class PreparedImage:
    data_uri: str
    width: int
    height: int


def prepare_image(image_bytes: bytes, max_side: int) -> PreparedImage:
    """Downsize (never upsize) to `max_side` and re-encode as a JPEG data URI."""
    image = Image.open(io.BytesIO(image_bytes))
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
        image_bytes = buffer.getvalue()
    encoded = base64.b64encode(image_bytes).decode()
    return PreparedImage(f"data:image/jpeg;base64,{encoded}", image.width, image.height)


def parse_reply(content: str | None) -> tuple[float, tuple[str, ...]]:
    """Strictly parse `{"difficulty": 0..1, "factors": [str]}`."""
    if not content:
        raise ReplyError("empty reply")
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise ReplyError(f"not JSON ({exc.msg} at char {exc.pos}): {content[:60]!r}") from None
    if not isinstance(data, dict):
        raise ReplyError(f"JSON is a {type(data).__name__}, not an object")
    difficulty = data.get("difficulty")
    if isinstance(difficulty, bool) or not isinstance(difficulty, int | float):
        raise ReplyError(f"difficulty is not a number: {difficulty!r}")
    if not math.isfinite(difficulty) or not 0.0 <= difficulty <= 1.0:
        raise ReplyError(f"difficulty out of range [0, 1]: {difficulty!r}")
    factors = data.get("factors", [])
    if not isinstance(factors, list) or not all(isinstance(f, str) for f in factors):
        raise ReplyError(f"factors is not a list of strings: {factors!r}")
    return float(difficulty), tuple(factors)


class GatewayClient:
    """Scores one prepared image with a named model through the gateway."""

    def __init__(self, config: GatewayConfig, api_base: str, api_key: str, template: PromptTemplate) -> None:
        self._config = config
        self._template = template
        self._prices = {m.name: m for m in config.models}
        litellm.register_model({_litellm_name(m.name): _price_entry(m) for m in config.models})
        self._router = Router(
            model_list=[
                {
                    "model_name": m.name,
                    "litellm_params": {
                        "model": _litellm_name(m.name),
                        "api_base": api_base,
                        "api_key": api_key,
                        "timeout": config.timeout_s,
                        "max_retries": 0,  # the Router owns retries, so they are counted once
                    },
                }
                for m in config.models
            ],
            num_retries=config.max_retries,
            retry_policy=RetryPolicy(
                BadRequestErrorRetries=0,
                AuthenticationErrorRetries=0,
                ContentPolicyViolationErrorRetries=0,
                RateLimitErrorRetries=config.max_retries,
                InternalServerErrorRetries=config.max_retries,
                TimeoutErrorRetries=config.max_retries,
            ),
            fallbacks=[{config.models[0].name: [m.name for m in config.models[1:]]}] if len(config.models) > 1 else [],
            disable_cooldowns=True,  # one deployment per model: a cooldown would fail every call
            timeout=config.timeout_s,
        )

    def worst_case_cost(self, model: str, image: PreparedImage) -> float:
        """Upper bound on one call's cost, reserved before sending.

        A call to the primary may be served by any model of its fallback chain, so its bound
        is the most expensive of them.
        """
        chain = self._config.models if model == self._config.models[0].name else [self._prices[model]]
        tiles = math.ceil(image.width / IMAGE_TILE) * math.ceil(image.height / IMAGE_TILE)
        text_tokens = math.ceil((len(self._template.system) + len(self._template.user)) / 3)
        input_tokens = INPUT_SAFETY * (text_tokens + 85 + 170 * tiles)
        return max(
            (input_tokens * price.input_eur_per_mtok + price.max_output_tokens * price.output_eur_per_mtok) / 1e6
            for price in chain
        )

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self._prices[model]
        return (input_tokens * price.input_eur_per_mtok + output_tokens * price.output_eur_per_mtok) / 1e6

    async def score(self, image: PreparedImage, model: str, seed: int, temperature: float) -> Reply:
        """One scoring call (with the Router's retries). Raises ReplyError or litellm errors."""
        start = time.perf_counter()
        response = await self._router.acompletion(
            model=model,
            messages=[
                {"role": "system", "content": self._template.system},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self._template.user},
                        {"type": "image_url", "image_url": {"url": image.data_uri}},
                    ],
                },
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "difficulty", "schema": self._template.response_schema, "strict": True},
            },
            seed=seed,
            temperature=temperature,
            max_tokens=self._prices[model].max_output_tokens,
        )
        latency = time.perf_counter() - start
        served_by = _served_model(response, model, self._prices)
        usage = getattr(response, "usage", None)
        input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self.cost(served_by, input_tokens, output_tokens)
        content = response.choices[0].message.content
        try:
            difficulty, factors = parse_reply(content)
        except ReplyError as exc:
            raise PaidReplyError(str(exc), cost, served_by) from None
        return Reply(difficulty, factors, served_by, input_tokens, output_tokens, cost, latency)


class PaidReplyError(ReplyError):
    """A reply that failed parsing still cost money: carry the cost so it is settled."""

    def __init__(self, message: str, cost_eur: float, model: str) -> None:
        super().__init__(message)
        self.cost_eur = cost_eur
        self.model = model


def _litellm_name(name: str) -> str:
    """Gateway model names go through litellm's OpenAI-compatible provider."""
    return f"openai/{name}"


def _price_entry(model: ModelPrice) -> dict:
    return {
        "input_cost_per_token": model.input_eur_per_mtok / 1e6,
        "output_cost_per_token": model.output_eur_per_mtok / 1e6,
        "max_output_tokens": model.max_output_tokens,
        "litellm_provider": "openai",
        "mode": "chat",
        "supports_vision": True,
        "supports_response_schema": True,
    }


def _served_model(response, requested: str, prices: dict[str, ModelPrice]) -> str:
    """The configured model that answered (a fallback may have served the call)."""
    hidden = getattr(response, "_hidden_params", {}) or {}
    group = hidden.get("model_group") or (hidden.get("litellm_model_name") or "").removeprefix("openai/")
    if group in prices:
        return group
    answered = (getattr(response, "model", "") or "").removeprefix("openai/")
    return answered if answered in prices else requested


def gateway_key(config: GatewayConfig) -> str:
    """The virtual key from the environment; the embedded scorer accepts a fixed local key."""
    key = os.environ.get(config.key_env)
    if key:
        return key
    if config.url == "embedded":
        return "tailcal-embedded-local"
    raise GatewayError(f"gateway {config.url} needs a virtual key: set the {config.key_env} environment variable")
