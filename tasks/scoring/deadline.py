"""A whole-reply deadline for gateway calls, as an httpx transport under litellm's OpenAI client.

httpx's timeouts (and so litellm's `timeout`) bound each network operation, not the request:
a gateway that trickles its reply a few bytes at a time resets the read timeout with every
chunk and is never timed out (measured: `gateway.timeout_s` 1.0, a 298-byte reply sent 8
bytes every 0.2 s took 7.9 s and came back as a success). A proxy sending keep-alive bytes,
or a provider streaming slowly under load, would hold a concurrency slot for as long as it
likes. Neither httpx nor litellm has a total-time limit, so this module adds one
(`gateway.reply_deadline_s`, 4 × `timeout_s` unless set: a total limit as tight as the
per-read one would also cut steady replies delayed by a busy client, measured at 200 calls in
flight on 2 cores with a 1 s gateway and timeout_s 1.8).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from openai import AsyncOpenAI


@dataclass
class Wire:
    """What one request did on the wire, as the transport saw it: whether it left on an open
    connection, the HTTP status the gateway sent, and whether the whole reply arrived.

    litellm's errors cannot tell these apart: a connect timeout and a read timeout are both a
    `Timeout`, and a 200 whose body it cannot read or that was cut is an `InternalServerError
    (HTTP 500)` no server sent. Whether the gateway may have billed the request depends on them.

    `slot` is held from before `before_send` until the reply is read or the request fails: the
    bound on requests in flight at the gateway (`gateway.concurrency`), so the client's own work
    around a call (litellm building the request and reading the reply, settling it) holds none.
    `before_send` is awaited right before the request goes out (the rpm slot): taken there, after
    litellm has built the request, a slow first call (litellm's lazy imports, ~1 s) cannot push
    a send past its slot, and the deadline does not include either wait. `started` is when it went.
    """

    slot: asyncio.Semaphore | None = None
    before_send: Callable[[], Awaitable[None]] | None = None
    # What `before_send` raised (Redis gone while taking the rpm slot): the request never left, and
    # openai would report it as a connection error, i.e. "the gateway could not be reached".
    local_error: Exception | None = None
    started: float | None = None
    sent: bool = False
    status: int | None = None
    complete: bool = False

    @property
    def answered_ok(self) -> bool:
        """The gateway sent a 2xx: it took the request and (presumably) billed it."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def may_be_billed(self) -> bool:
        """Sent, and not answered with an error status: a 2xx, or no answer (timed out, cut)."""
        return self.sent and (self.status is None or self.answered_ok)


WIRE: contextvars.ContextVar[Wire | None] = contextvars.ContextVar("tailcal_wire", default=None)


class DeadlineTransport(httpx.AsyncBaseTransport):
    """Sends a request and reads its whole reply within `deadline_s`, or raises httpx.ReadTimeout
    (which litellm maps to its Timeout error, retried by the scoring loop). Records what
    happened in the caller's `WIRE` record, when it set one."""

    def __init__(self, deadline_s: float, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._deadline_s = deadline_s
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        wire = WIRE.get() or Wire()
        async with wire.slot or contextlib.nullcontext():
            return await self._send(request, wire)

    async def _send(self, request: httpx.Request, wire: Wire) -> httpx.Response:
        if wire.before_send is not None:
            try:
                await wire.before_send()
            except Exception as exc:
                wire.local_error = exc
                raise
        wire.started = time.perf_counter()
        try:
            async with asyncio.timeout(self._deadline_s):
                try:
                    response = await self._inner.handle_async_request(request)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    raise  # no connection: nothing was sent
                except BaseException:
                    wire.sent = True  # connected, then failed (or timed out) before a status came back
                    raise
                wire.sent, wire.status = True, response.status_code
                try:
                    await response.aread()  # the body too: trickling is what per-read timeouts miss
                except BaseException:
                    await response.aclose()
                    raise
                wire.complete = True
                return response
        except TimeoutError:
            raise httpx.ReadTimeout(
                f"no complete reply within {self._deadline_s:g} s (gateway.reply_deadline_s)", request=request
            ) from None

    async def aclose(self) -> None:
        await self._inner.aclose()


def deadline_client(api_base: str, api_key: str, timeout_s: float, deadline_s: float) -> AsyncOpenAI:
    """An OpenAI client for `api_base`: each network wait within `timeout_s` (httpx's own
    timeouts), each request answered in full within `deadline_s`; handed to litellm per call
    (`client=`), so each attempt gets both.

    The connection pool is unbounded: `gateway.concurrency` (up to 1024) already bounds the calls
    in flight, and a pool smaller than that (httpx's default is 100) would make calls wait for a
    connection inside the deadline and time out without having been sent.
    """
    # no pool limit; keep-alive connections for as many calls as may be in flight
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    transport = DeadlineTransport(deadline_s, httpx.AsyncHTTPTransport(limits=limits))
    return AsyncOpenAI(
        api_key=api_key or "none",
        base_url=api_base,
        timeout=timeout_s,
        max_retries=0,  # the scoring loop owns retries (tasks/scoring/passes.py)
        http_client=httpx.AsyncClient(transport=transport, timeout=timeout_s, limits=limits),
    )
