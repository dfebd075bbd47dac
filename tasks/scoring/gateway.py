"""The VLM gateway client, on litellm's `acompletion` (retries and fallbacks are the scoring loop's).

One request per image: system + user text and the image as a JPEG data URI, downsized to
`max_image_side` to bound image tokens; `response_format` carries the template's JSON
schema. Replies are parsed strictly: anything that is not a JSON object with a finite
`difficulty` in [0, 1] and a list of string `factors` is a `ReplyError`. Two framings are
tolerated because they change no character of the object (see `parse_reply`): one code
fence around the whole reply, and whitespace around the object. A reply that cannot
succeed when asked again (cut at the length limit, a refusal) is a `ReplyError` with
`retryable=False`, so it is not paid for twice.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass

from tasks.config import GatewayConfig, ModelPrice
from tasks.errors import GatewayError
from tasks.imaging import for_the_wire
from tasks.scoring.deadline import WIRE, deadline_client
from tasks.scoring.offline_litellm import litellm
from tasks.scoring.prompts import PromptTemplate

log = logging.getLogger(__name__)
litellm.suppress_debug_info = True
logging.getLogger("LiteLLM").setLevel(logging.ERROR)

IMAGE_TILE = 512
INPUT_SAFETY = 1.5  # providers count image tokens differently; reserve generously


class ReplyError(ValueError):
    """The model answered, but not with the JSON the schema asks for.

    `retryable` is False when asking again cannot help: the same request is cut at the same
    length limit, and a refusal is the model's answer to this image and prompt.
    """

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


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
    """The image as a data URI whose media type matches its bytes: the upright picture every
    stage sees, downsized (never upsized) to `max_side` (`tasks.imaging.for_the_wire`)."""
    wire = for_the_wire(image_bytes, max_side)
    encoded = base64.b64encode(wire.data).decode()
    return PreparedImage(f"data:{wire.media_type};base64,{encoded}", wire.width, wire.height)


# One code fence around the whole reply: ```json … ``` or ``` … ``` (the tag in any case).
_FENCE = re.compile(r"\A\s*```(?:json)?\s*(?P<body>.*?)\s*```\s*\Z", re.DOTALL | re.IGNORECASE)


def parse_reply(content: str | None) -> tuple[float, tuple[str, ...]]:
    """Strictly parse `{"difficulty": 0..1, "factors": [str]}`.

    Accepted framings, each safe because it alters no character of the object, so the
    number kept is exactly the one the model wrote:
    - one code fence around the whole reply (models add it even under `response_format`):
      the fence is markdown presentation; its body goes through the same strict parse, and
      text outside the fence or a second fence is refused (which part was meant is a guess);
    - whitespace around the object (JSON's own insignificant whitespace; `json.loads`).
    Everything else is refused, not repaired: prose, a JSON value followed by other text,
    single quotes, trailing commas, NaN, a repeated key (which value counts is a guess).
    """
    if not content or not content.strip():
        raise ReplyError("empty reply")
    text = content
    fenced = _FENCE.match(content)
    if fenced and "```" not in fenced["body"]:
        text = fenced["body"]
    try:
        data = json.loads(text, object_pairs_hook=_refuse_repeated_keys)
    except RecursionError:
        raise ReplyError(f"not JSON: nested too deeply to read: {content[:60]!r}") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            raise ReplyError(
                f"not JSON: a JSON value followed by other text at char {exc.pos}: {text[exc.pos : exc.pos + 60]!r}"
            ) from None
        raise ReplyError(f"not JSON ({exc.msg} at char {exc.pos}): {content[:60]!r}") from None
    if not isinstance(data, dict):
        raise ReplyError(f"JSON is a {type(data).__name__}, not an object")
    difficulty = data.get("difficulty")
    if isinstance(difficulty, bool) or not isinstance(difficulty, int | float):
        raise ReplyError(f"difficulty is not a number: {difficulty!r}")
    if not 0.0 <= difficulty <= 1.0:  # NaN and ±inf fail it too; an int too large for a float is compared exactly
        text = repr(difficulty)
        shown = text if len(text) <= 40 else f"{text[:20]}… ({len(text)} digits)"
        raise ReplyError(f"difficulty out of range [0, 1]: {shown}")
    factors = data.get("factors", [])
    if not isinstance(factors, list) or not all(isinstance(f, str) for f in factors):
        raise ReplyError(f"factors is not a list of strings: {factors!r}")
    return float(difficulty) + 0.0, tuple(factors)  # + 0.0: a "-0.0" is kept as 0.0


def _refuse_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        # json.loads would keep the last value silently: a number that is wrong without an error
        raise ReplyError(f"repeated key {repeated[0]!r} in the JSON object")
    return dict(pairs)


def reply_problem(problem: ReplyError, finish_reason: str | None, refusal: str | None, max_tokens: int) -> ReplyError:
    """Why a reply that did not parse (`problem`) failed: the model's refusal or the length
    limit when the provider says so (neither is retryable: asking again cannot help)."""
    if refusal and refusal.strip():
        return ReplyError(f"model refused: {_quote(refusal)}", retryable=False)
    if finish_reason == "length":
        return ReplyError(
            f"reply cut at the length limit ({max_tokens} output tokens) before the JSON was complete: "
            "raise gateway.models[].max_output_tokens for this model",
            retryable=False,
        )
    if finish_reason == "content_filter":
        return ReplyError("the provider's content filter stopped the reply", retryable=False)
    return problem


def _quote(text: str, limit: int = 160) -> str:
    """Model text for a reason: one line, trimmed."""
    line = " ".join(text.split())
    return repr(line if len(line) <= limit else line[: limit - 1] + "…")


# A gateway's error text may echo what it was sent. These never reach a reason or a log:
_DATA_URI = re.compile(r"data:[\w/+.-]*;base64,[A-Za-z0-9+/=]*")
_BEARER = re.compile(r"(?i)\bbearer\s+\S+")
_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{6,}")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{40,}")  # base64 payloads, long tokens
# litellm's wrapping, once or nested (a LiteLLM proxy wraps its upstream's error, the client wraps
# the proxy's): "litellm.AuthenticationError: AuthenticationError: OpenAIException - <message>"
_LITELLM_PREFIX = re.compile(r"\A(?:litellm\.\w+:\s*(?:\w+Error:\s*)?(?:\w+Exception\s*-\s*)?)+")
# ... and the paragraph it appends ("LiteLLM: model group 'm' failed with the error above. …")
_LITELLM_SUFFIX = re.compile(r"\s*\n\s*\n\s*(?:LiteLLM:|Received Model Group|Available Model Group).*\Z", re.DOTALL)
SERVER_MESSAGE_CHARS = 300


def server_message(exc: BaseException) -> str | None:
    """The gateway's own error message: an OpenAI-style body's `error.message` (and its
    `param`), else the first line litellm kept of the response. Unredacted: see `redact`.

    A LiteLLM proxy passes its upstream's error on inside its own wrapping
    ("litellm.BadRequestError: OpenAIException - <message>", then a paragraph naming the
    model group): the wrapping is removed, in the body as in the response text.
    """
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        message = error.get("message")
        if isinstance(message, str) and message.strip():
            message = _LITELLM_SUFFIX.sub("", _LITELLM_PREFIX.sub("", message.strip())) or message.strip()
            param = error.get("param")
            # LiteLLM's proxy sends the text "None" where it has no param
            if isinstance(param, str) and param not in {"", "None", "null"} and param not in message:
                return f"{message} (param {param})"
            return message
    text = getattr(exc, "message", None)
    if not isinstance(text, str) or not text.strip():
        return None
    return _LITELLM_PREFIX.sub("", text.strip()).split("\n", 1)[0].strip() or None


class GatewayClient:
    """Scores one prepared image with a named model through the gateway."""

    def __init__(self, config: GatewayConfig, api_base: str, api_key: str, template: PromptTemplate) -> None:
        self._warned_no_usage = False
        self._config = config
        self._template = template
        self._prices = {m.name: m for m in config.models}
        self.api_base = api_base
        self._secrets = tuple(s for s in (api_key,) if s)
        litellm.register_model({_litellm_name(m.name): _price_entry(m) for m in config.models})
        self._api_key = api_key
        # Every model is served by the one gateway: one client, with a whole-reply deadline per attempt.
        self._client = deadline_client(api_base, api_key, config.timeout_s, config.attempt_deadline_s)
        # openai imports its chat resources on first use: ~0.5 s that would otherwise hold up the
        # first call, on the event loop's executor, while the shard's other calls wait on the GIL.
        _ = self._client.chat.completions

    def worst_case_cost(self, model: str, image: PreparedImage) -> float:
        """Upper bound on one call's cost, reserved before sending.

        A gateway may serve a call to the primary with another model of `gateway.models` (its
        own fallback; the reply names it), so the primary's bound is the most expensive of them.
        """
        chain = self._config.models if model == self._config.models[0].name else [self._prices[model]]
        tiles = math.ceil(image.width / IMAGE_TILE) * math.ceil(image.height / IMAGE_TILE)
        text_tokens = math.ceil((len(self._template.system) + len(self._template.user)) / 3)
        input_tokens = INPUT_SAFETY * (text_tokens + 85 + 170 * tiles)
        return max(
            (input_tokens * price.input_eur_per_mtok + price.max_output_tokens * price.output_eur_per_mtok) / 1e6
            for price in chain
        )

    def redact(self, text: str) -> str:
        """`text` without the virtual key, bearer tokens, key-like strings or image payloads, and
        trimmed: what may go into a failure reason or a log line."""
        for secret in self._secrets:
            text = text.replace(secret, "****")
        text = _DATA_URI.sub("data:…(image omitted)", text)
        text = _BEARER.sub("Bearer ****", text)
        text = _KEY_LIKE.sub("****", text)
        text = _LONG_TOKEN.sub("…(omitted)", text)
        text = " ".join(text.split())
        return text if len(text) <= SERVER_MESSAGE_CHARS else text[: SERVER_MESSAGE_CHARS - 1] + "…"

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self._prices[model]
        return (input_tokens * price.input_eur_per_mtok + output_tokens * price.output_eur_per_mtok) / 1e6

    async def score(self, image: PreparedImage, model: str, seed: int, temperature: float) -> Reply:
        """One request to the gateway, not retried (the scoring loop retries). Raises ReplyError or
        litellm errors."""
        start = time.perf_counter()
        # litellm's own acompletion, not its Router: tailcal's scoring loop owns retries and
        # fallbacks (each attempt takes its own budget reservation and rpm slot), so the Router had
        # nothing left to do but its per-call bookkeeping (~20 % of the client's CPU per call, bench/scoring.py (e)).
        response = await litellm.acompletion(
            model=_litellm_name(model),
            api_base=self.api_base,
            api_key=self._api_key,
            timeout=self._config.timeout_s,
            max_retries=0,
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
            client=self._client,
        )
        wire = WIRE.get()  # from when the request left, not from before its wait for an rpm slot
        latency = time.perf_counter() - (wire.started if wire is not None and wire.started else start)
        served_by = _served_model(response, model, self._prices)
        usage = getattr(response, "usage", None)
        input_tokens = _token_count(getattr(usage, "prompt_tokens", None))
        output_tokens = _token_count(getattr(usage, "completion_tokens", None))
        if input_tokens and output_tokens:  # a reply has tokens both ways; litellm reads a missing count as 0
            cost = self.cost(served_by, input_tokens, output_tokens)
        else:
            # An image call always has input and output tokens: a reply without usage (or with counts
            # that are missing, 0, negative or not whole numbers) was still billed. Booking it at nothing would
            # let spend pass the cap unseen; book the worst case.
            cost = self.worst_case_cost(served_by, image)
            if not self._warned_no_usage:
                self._warned_no_usage = True
                log.warning(
                    "gateway %s reports no usable token usage for %s (prompt_tokens %r, completion_tokens %r): "
                    "each such call is booked at its worst-case price (€%.6f); spend and the budget cap count that",
                    self.api_base,
                    served_by,
                    getattr(usage, "prompt_tokens", None),
                    getattr(usage, "completion_tokens", None),
                    cost,
                )
        if not response.choices:
            raise PaidReplyError("the gateway answered with no choices (an empty reply)", cost, served_by)
        choice = response.choices[0]
        message = choice.message
        content = message.content
        # litellm keeps OpenAI's `refusal` among the provider-specific fields
        refusal = getattr(message, "refusal", None) or (
            (getattr(message, "provider_specific_fields", None) or {}).get("refusal")
        )
        refusal = refusal if isinstance(refusal, str) and refusal.strip() else None
        finish_reason = getattr(choice, "finish_reason", None)
        max_tokens = self._prices[model].max_output_tokens
        try:
            # A complete, valid object is kept even when finish_reason is "length": the cut fell
            # after it (trailing whitespace), so no part of the number was lost.
            difficulty, factors = parse_reply(content)
            unparsed = None
        except ReplyError as exc:
            unparsed = exc
        # a valid-looking object beside a refusal, or one the provider's filter stopped, is not the model's score
        if unparsed or refusal or finish_reason == "content_filter":
            problem = reply_problem(unparsed or ReplyError("refused or filtered"), finish_reason, refusal, max_tokens)
            raise PaidReplyError(str(problem), cost, served_by, problem.retryable)
        return Reply(difficulty, factors, served_by, input_tokens, output_tokens, cost, latency)


class PaidReplyError(ReplyError):
    """A reply that failed parsing still cost money: carry the cost so it is settled."""

    def __init__(self, message: str, cost_eur: float, model: str, retryable: bool = True) -> None:
        super().__init__(message, retryable)
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
    """The configured model that answered: the reply's `model` when it names one of
    `gateway.models` (a gateway may serve a call with its own fallback, billed at that model's
    price), else the model requested (providers answer with dated names such as
    gpt-4o-2024-08-06). litellm's `model_group` is always the name requested, so it is not read."""
    answered = (getattr(response, "model", "") or "").removeprefix("openai/")
    return answered if answered in prices else requested


def _token_count(value: object) -> int | None:
    """A usage count as a whole number ≥ 0, else None (missing, negative, fractional, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value) if value >= 0 and value == int(value) else None


def gateway_key(config: GatewayConfig) -> str:
    """The virtual key from the environment; the embedded scorer accepts a fixed local key."""
    key = os.environ.get(config.key_env)
    if key:
        return key
    if config.url == "embedded":
        return "tailcal-embedded-local"
    raise GatewayError(f"gateway {config.url} needs a virtual key: set the {config.key_env} environment variable")
