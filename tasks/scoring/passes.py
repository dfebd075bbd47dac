"""Score candidates, pass by pass: cache → budget → rate limit → gateway → settle → store.

A shard of candidates is scored for every pass inside one event loop. Within a shard,
near-duplicates are scored leaders-first: the first frame of each near-duplicate group is
sent, the rest wait and then hit the cache, so a burst is paid once, not once per frame.
Every candidate ends as `scored`, `cached`, `failed` (with the reason) or `unscored`
(budget exhausted under `cached_only`). When `gateway.max_identical_errors` identical
failures that retrying does not fix arrive in a row (a scored call resets the count), every
shard of the process stops sending and raises `GatewayError` naming the gateway, its own
message and the fix: calls already in flight finish, settle and are cached first. Those
failures are a request the gateway rejects (4xx), a rate limit that outlasted every retry,
a gateway that cannot be reached, and a reply that asking again cannot mend.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

import httpx
import numpy as np
import openai
import redis

from tasks.config import GatewayConfig, ScoringSetup
from tasks.errors import GatewayError, ServiceError
from tasks.redaction import mask_url
from tasks.scoring.budget import BudgetLedger, Reservation, ledger_id
from tasks.scoring.cache import CachedScore, ScoreCache, max_distance_for, phash64
from tasks.scoring.deadline import WIRE, Wire
from tasks.scoring.gateway import GatewayClient, PaidReplyError, PreparedImage, prepare_image, server_message
from tasks.scoring.metrics import AttemptLogger, ScoringMetrics
from tasks.scoring.offline_litellm import litellm
from tasks.scoring.prompts import PromptTemplate, lock_template
from tasks.scoring.ratelimit import RateLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")

REPLY_ATTEMPTS = 2  # prose / invalid JSON / out-of-range is asked once more, then recorded
# (a reply that cannot succeed when asked again, cut at the length limit or a refusal, is not)
# Once max_identical_errors stops a gateway, every call to it is refused until none has
# arrived for this long: the shards already submitted beside the failing one end at once
# without sending, and a run started later begins with a fresh count.
STOP_HOLD_S = 60.0
RESERVE_WAIT_S = 0.05
RESERVE_WAIT_LOG_S = 10.0
# A Redis restart (or failover) shorter than this is ridden out; a longer outage stops the
# shard with a ServiceError. Work already paid is settled, cached and in the shard logs.
REDIS_OUTAGE_S = 30.0


class ScorableCandidate(Protocol):
    id: str
    image: bytes


@dataclass(frozen=True)
class ScoreRecord:
    """One candidate in one pass."""

    id: str
    pass_index: int
    status: str  # scored | cached | failed | unscored
    difficulty: float | None
    factors: tuple[str, ...] = ()
    model: str | None = None
    cost_eur: float = 0.0
    latency_s: float = 0.0
    reason: str = ""


@dataclass
class ScoringSession:
    """Everything a shard needs; built once per process by `open_session`."""

    setup: ScoringSetup
    template: PromptTemplate
    gateway: GatewayClient
    ledger: BudgetLedger
    limiter: RateLimiter
    caches: dict[tuple[str, int], ScoreCache]  # (model, pass) → cache namespace
    metrics: ScoringMetrics
    ledger_label: str
    exhausted: bool = False
    alerts: list[float] = field(default_factory=list)

    def models_in_order(self) -> list[str]:
        """Primary first; the budget fallback (if any) last."""
        names = [m.name for m in self.setup.gateway.models]
        fallback = self.setup.budget.fallback_model
        return [n for n in names if n != fallback] + ([fallback] if fallback in names else [])


def namespace(template: PromptTemplate, model: str, pass_index: int) -> str:
    return f"{template.id}:{model}:p{pass_index}"


def open_session(
    setup: ScoringSetup,
    client: redis.Redis,
    api_base: str,
    api_key: str,
    template: PromptTemplate,
    metrics: ScoringMetrics | None = None,
) -> ScoringSession:
    """Wire cache namespaces, the budget ledger, the limiter and the gateway client."""
    metrics = metrics or ScoringMetrics.shared()
    max_distance = max_distance_for(setup.cache.similarity)
    ttl_s = int(setup.cache.ttl_hours * 3600)
    caches = {
        (m.name, p): ScoreCache(client, namespace(template, m.name, p), max_distance, ttl_s)
        for m in setup.gateway.models
        for p in range(setup.scoring.passes)
    }
    lock_template(client, template, "tailcal:cache")
    gateway = GatewayClient(setup.gateway, api_base, api_key, template)
    litellm.callbacks = [cb for cb in litellm.callbacks if not isinstance(cb, AttemptLogger)]
    litellm.callbacks.append(AttemptLogger(metrics))
    # A lease outlives the longest call: every attempt timing out, plus room for Retry-After waits.
    lease_s = 2 * setup.gateway.attempt_deadline_s * (setup.gateway.max_retries + 1) + 60
    ledger = BudgetLedger(client, api_key, setup.budget.cap_eur, setup.budget.alert_fraction, lease_s)
    label = ledger_id(api_key)
    _declare_series(metrics, setup, ledger, label)
    return ScoringSession(
        setup=setup,
        template=template,
        gateway=gateway,
        ledger=ledger,
        limiter=RateLimiter(client, label, setup.gateway.rpm),
        caches=caches,
        metrics=metrics,
        ledger_label=label,
    )


def _declare_series(metrics: ScoringMetrics, setup: ScoringSetup, ledger: BudgetLedger, label: str) -> None:
    """Give every dashboard series a value from the session's start, so a dashboard query returns
    0 rather than nothing before the first failure, alert or exhausted cap."""
    state = ledger.state()
    metrics.budget_spent_eur.labels(ledger=label).set(state.spent_eur)
    metrics.budget_exhausted.labels(ledger=label).set(1 if state.spent_eur >= setup.budget.cap_eur else 0)
    metrics.budget_alerts.labels(ledger=label)
    metrics.cache_lookups.labels(result="hit")
    metrics.cache_lookups.labels(result="miss")
    for model in setup.gateway.models:
        metrics.attempt_failures.labels(model=model.name.removeprefix("openai/"))
        metrics.spend_eur.labels(ledger=label, model=model.name)


def score_shard(session: ScoringSession, candidates: Sequence[ScorableCandidate]) -> list[ScoreRecord]:
    """Score a shard for every pass; blocks the calling thread until it is done.

    Every shard of the process runs on one long-lived event loop: litellm binds its
    logging worker and HTTP clients to the loop they were first used on, so a new loop per
    shard (or per thread) breaks them. Shards from several threads run concurrently on it.
    """
    return _background_loop().run(_score_shard_async(session, candidates))


class _BackgroundLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # Image work (decode, pHash, resize, JPEG, base64) runs in threads of its own, where PIL
        # releases the GIL: done inline it would stall the loop and every reply in flight. Not in
        # the loop's default executor: litellm builds each request there (`acompletion` runs
        # `completion` via run_in_executor(None, …)), and a shard queues an image job per cache
        # miss at its start, so calls holding a slot would wait behind them.
        self.image_work = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tailcal-image")
        # (gateway url, concurrency) → the process's bound on calls in flight to that gateway
        self.call_slots: dict[tuple[str, int], _CallSlots] = {}
        # (gateway endpoint, models) → identical non-retryable failures in a row, across shards
        self.error_streaks: dict[tuple[str, tuple[str, ...]], _ErrorStreak] = {}
        threading.Thread(target=self.loop.run_forever, name="tailcal-scoring-loop", daemon=True).start()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


_LOOP: _BackgroundLoop | None = None
_LOOP_LOCK = threading.Lock()


def _background_loop() -> _BackgroundLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = _BackgroundLoop()
        return _LOOP


async def _score_shard_async(session: ScoringSession, candidates: Sequence[ScorableCandidate]) -> list[ScoreRecord]:
    background = _background_loop()
    image_work = partial(background.loop.run_in_executor, background.image_work)
    hashes = await image_work(lambda: [phash64(candidate.image) for candidate in candidates])
    leaders, followers = _leaders_first(hashes, max_distance_for(session.setup.cache.similarity))
    slots = _call_slots(session.setup.gateway)  # runs on the background loop
    prepared: dict[int, PreparedImage] = {}

    async def call(index: int, pass_index: int) -> ScoreRecord:
        if index not in prepared:  # only cache misses pay for the resize + base64 data URI
            prepared[index] = await image_work(
                prepare_image, candidates[index].image, session.setup.gateway.max_image_side
            )
        async with slots.under_way:
            return await _call(
                session, candidates[index].id, hashes[index], prepared[index], pass_index, slots.on_the_wire
            )

    records: list[ScoreRecord] = []
    for pass_index in range(session.setup.scoring.passes):
        by_index: dict[int, ScoreRecord] = {}
        for group in (leaders, followers):
            misses = []
            group_hashes = [hashes[i] for i in group]
            hits = await _ride_out(partial(_lookup, session, group_hashes, pass_index), "looking up the score cache")
            for index, hit in zip(group, hits, strict=True):
                if hit is None:
                    misses.append(index)
                else:
                    by_index[index] = ScoreRecord(
                        candidates[index].id, pass_index, "cached", hit.difficulty, hit.factors, hit.model
                    )
            # Every call of the group ends (in flight: settled and cached) before a stop
            # (GatewayError) or an outage (ServiceError) leaves the shard.
            results = await asyncio.gather(*(call(i, pass_index) for i in misses), return_exceptions=True)
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                raise failure
            by_index.update(zip(misses, results, strict=True))
        records.extend(by_index[i] for i in range(len(candidates)))
    return records


# Calls under way per request in flight: enough that a call has its request built and waits at
# the wire when a slot frees, few enough that budget reservations stay close to what is sent.
UNDER_WAY_PER_SLOT = 2


@dataclass
class _CallSlots:
    """The process's bounds for one gateway, shared by every shard (all run on the one background
    loop), so a shard's start (hashing, look-ups) and tail overlap the others'.

    - `on_the_wire`: requests in flight at the gateway, `gateway.concurrency`, taken as a request
      leaves and given back when its reply is read (`Wire.slot`). Held any longer, around litellm
      building the request and reading the reply and around settling, each slot idled for the
      client's own CPU time: 1 × 8 and 2 × 4 reached 0.894–0.914 of the bound at 200 ms latency
      (bench/scoring.py's (a) rows, 1,500 calls, 2026-12-04; 0.921–0.936 after).
    - `under_way`: calls between their budget reservation and their result, UNDER_WAY_PER_SLOT ×
      `gateway.concurrency`; what bounds the reservations held and the requests being built.
    """

    on_the_wire: asyncio.Semaphore
    under_way: asyncio.Semaphore


def _call_slots(gateway: GatewayConfig) -> _CallSlots:
    slots = _background_loop().call_slots
    key = (gateway.url, gateway.concurrency)
    if key not in slots:
        slots[key] = _CallSlots(
            asyncio.Semaphore(gateway.concurrency), asyncio.Semaphore(UNDER_WAY_PER_SLOT * gateway.concurrency)
        )
    return slots[key]


@dataclass
class _ErrorStreak:
    """Identical non-retryable failures in a row from one gateway, counted across every shard of
    the process (all run on the background loop, so no lock), and the stop they lead to."""

    counts: Counter = field(default_factory=Counter)
    stop: str | None = None  # the GatewayError message once the limit was reached
    refused_at: float = 0.0  # when the stop last refused a call (monotonic)

    def check(self) -> None:
        """Before a call is paid for: raise the stop's GatewayError while it holds."""
        if self.stop is None:
            return
        now = time.monotonic()
        if now - self.refused_at > STOP_HOLD_S:
            self.stop, self.counts = None, Counter()
            return
        self.refused_at = now
        raise GatewayError(self.stop)

    def scored(self) -> None:
        if self.stop is None:
            self.counts.clear()

    def failed(self, kind: str, reason: str, limit: int, fix: str, gateway: str) -> None:
        """Count a failure of `kind` that retrying does not fix; raise GatewayError, with the latest
        `reason`, once `limit` of one kind came in a row."""
        self.counts[kind] += 1
        if self.stop is None and self.counts[kind] >= limit:
            self.stop = (
                f"scoring stopped after {limit} identical failures in a row from the gateway at {mask_url(gateway)}, "
                f"and nothing more is sent: {reason.rstrip('.')}. {fix} Then rerun: what was scored is cached and is "
                f"not paid again. If failures like this are expected, raise gateway.max_identical_errors (now {limit})."
            )
            self.refused_at = time.monotonic()
            log.error("%s", self.stop)
        if self.stop is not None:
            raise GatewayError(self.stop)


def _error_streak(session: ScoringSession) -> _ErrorStreak:
    streaks = _background_loop().error_streaks
    key = (session.gateway.api_base, tuple(m.name for m in session.setup.gateway.models))
    if key not in streaks:
        streaks[key] = _ErrorStreak()
    return streaks[key]


def _lookup(
    session: ScoringSession, hashes: list[int], pass_index: int, count: bool = True
) -> list[CachedScore | None]:
    """Batch look-up, primary model's namespace first, then the fallback's."""
    found: list[CachedScore | None] = [None] * len(hashes)
    for model in session.models_in_order():
        open_slots = [i for i, hit in enumerate(found) if hit is None]
        if not open_slots:
            break
        for slot, hit in zip(
            open_slots, session.caches[(model, pass_index)].lookup_many([hashes[i] for i in open_slots]), strict=True
        ):
            found[slot] = hit
    if not count:  # forecasts look without counting
        return found
    hits = sum(hit is not None for hit in found)
    session.metrics.cache_lookups.labels(result="hit").inc(hits)
    session.metrics.cache_lookups.labels(result="miss").inc(len(found) - hits)
    for hit in found:
        if hit is not None:
            session.metrics.requests.labels(model=hit.model, outcome="cached").inc()
    return found


def estimate_hit_rate(session: ScoringSession, sample: Sequence[ScorableCandidate]) -> float:
    """Expected cache-hit share for a pool like `sample`: entries already cached, plus
    near-duplicates inside the sample that will hit once their leader is scored."""
    if not sample:
        return 0.0
    hashes = [phash64(c.image) for c in sample]
    cached = [hit is not None for hit in _lookup(session, hashes, pass_index=0, count=False)]
    leaders, _ = _leaders_first(hashes, max_distance_for(session.setup.cache.similarity))
    paid = sum(1 for i in leaders if not cached[i])
    return 1 - paid / len(sample)


def _leaders_first(hashes: list[int], max_distance: int) -> tuple[list[int], list[int]]:
    """Split indices into near-duplicate group leaders and the rest (greedy, in order)."""
    leaders: list[int] = []
    leader_hashes = np.empty(len(hashes), dtype=np.uint64)
    followers: list[int] = []
    for index, value in enumerate(hashes):
        if leaders and int(np.bitwise_count(leader_hashes[: len(leaders)] ^ np.uint64(value)).min()) <= max_distance:
            followers.append(index)
        else:
            leader_hashes[len(leaders)] = value
            leaders.append(index)
    return leaders, followers


async def _call(
    session: ScoringSession,
    candidate_id: str,
    phash: int,
    image: PreparedImage,
    pass_index: int,
    on_the_wire: asyncio.Semaphore,
) -> ScoreRecord:
    """A cache miss, sent until it is scored or given up on; each request holds one of
    `on_the_wire` (`_CallSlots`) from its send to its reply's last byte.

    Every request that leaves the process (a first try, a retry, a provider fallback, an invalid
    reply asked again) first reserves its own worst-case cost and takes its own rpm slot, then is
    settled. That is why retries and fallbacks live here and not in litellm's Router: the
    Router's retries were sent past both (measured: rpm 60 with half the calls answering 500 sent
    124 requests a minute; with 30 % of replies hanging past the deadline the provider billed
    €0.00263 while €0.00163 was booked).

    - Retried, up to `gateway.max_retries` per model, after litellm's own back-off
      (`calculate_retry_after`, which honours `Retry-After`): timeouts, 429, 408/409, 5xx, an
      unreachable gateway. Then the next model of `gateway.models`, if any. Other 4xx are not.
    - A request that reached the gateway and got no error status back (timed out, cut mid-body,
      a 2xx litellm cannot read) may have been billed: it is booked at its worst-case price, so
      the cap holds whatever the provider did. One never sent (refused, no connection) books nothing.
      What happened on the wire comes from the transport (`Wire`), not from litellm's error.
    - Prose, invalid JSON, an out-of-range score or an unreadable 2xx is asked once more.

    Redis calls here are sub-millisecond on loopback, so they run inline rather than paying a
    thread hop each.
    """
    booked_eur = 0.0  # attempts that got no score but were (or may have been) billed
    models = session.models_in_order()
    max_retries = session.setup.gateway.max_retries
    model_index = retries = invalid_replies = uncertain = 0
    streak = _error_streak(session)
    limit = session.setup.gateway.max_identical_errors

    def ask_again(reason: str, retryable: bool = True) -> bool:
        """A paid reply that did not parse: whether to ask once more."""
        nonlocal invalid_replies
        invalid_replies += 1
        log.info("%s pass %d: %s (attempt %d)", candidate_id, pass_index, reason, invalid_replies)
        return retryable and invalid_replies < REPLY_ATTEMPTS

    def failed(model: str, reason: str) -> ScoreRecord:
        session.metrics.requests.labels(model=model, outcome="failed").inc()
        return ScoreRecord(candidate_id, pass_index, "failed", None, model=model, cost_eur=booked_eur, reason=reason)

    while True:
        streak.check()  # a stopped gateway is sent nothing more
        model = models[model_index]
        worst = session.gateway.worst_case_cost(model, image)
        token = uuid.uuid4().hex  # names this attempt's reservation and settlement
        reservation = await _reserve(session, worst, token)
        if reservation is Reservation.EXHAUSTED:
            if session.setup.budget.on_exhausted == "fallback_model" and model_index + 1 < len(models):
                model_index, retries = model_index + 1, 0  # the cheaper model may still fit what is left
                continue
            session.exhausted = True
            session.metrics.budget_exhausted.labels(ledger=session.ledger_label).set(1)
            session.metrics.requests.labels(model=model, outcome="unscored").inc()
            return ScoreRecord(
                candidate_id, pass_index, "unscored", None, cost_eur=booked_eur, reason="budget exhausted"
            )
        seed = session.setup.scoring.base_seed + pass_index
        # The gateway's slot and the rpm slot are taken as the request leaves (see Wire).
        wire = Wire(slot=on_the_wire, before_send=partial(_before_send, session, streak))
        wire_token = WIRE.set(wire)
        try:
            reply = await _holding_lease(
                session, token, session.gateway.score(image, model, seed, session.setup.scoring.temperature)
            )
        except PaidReplyError as exc:
            await _settle(session, token, worst, exc.cost_eur, exc.model)
            booked_eur += exc.cost_eur
            reason = f"invalid reply: {exc}"
            if ask_again(reason, exc.retryable):
                continue
            streak.failed(reason, reason, limit, _fix_for(None, session.setup.gateway), session.gateway.api_base)
            return failed(exc.model, reason)
        except (openai.OpenAIError, httpx.HTTPError, TimeoutError) as exc:
            if wire.local_error is not None:  # stopped here before sending (a stop, the rpm slot's Redis)
                await _settle(session, token, worst, 0.0, model, sent=False)
                raise wire.local_error from None
            # Sent and not refused with an error status (timed out, cut, or a 2xx litellm could not
            # read): the provider may have billed it, so it is booked at its worst case.
            charge = worst if wire.may_be_billed else 0.0
            await _settle(session, token, worst, charge, model)
            booked_eur += charge
            uncertain += charge > 0
            if wire.answered_ok and wire.complete:  # the same gateway will send the same kind of body again
                reason = _unreadable(exc, wire, session.gateway.redact)
                if ask_again(reason):
                    continue
                streak.failed("unreadable reply", reason, limit, UNREADABLE_FIX, session.gateway.api_base)
                return failed(model, reason)
            if _retryable(exc) and retries < max_retries:
                retries += 1
                await asyncio.sleep(_back_off_s(exc, retries, max_retries))
                continue
            if _retryable(exc) and model_index + 1 < len(models):
                log.info("%s pass %d: %s failed %d times; falling back", candidate_id, pass_index, model, retries + 1)
                model_index, retries = model_index + 1, 0
                continue
            # a 2xx cut short by the gateway (a deadline that cut it is a timeout, described as one)
            cut = wire.answered_ok and not _timed_out(exc)
            reason = _unreadable(exc, wire, session.gateway.redact) if cut else _describe(exc, session.gateway.redact)
            if uncertain:
                reason += (
                    f" ({uncertain} attempts the gateway may have billed booked at their worst-case price, "
                    f"€{booked_eur:.6f} in all)"
                )
            if _final(exc) and not wire.answered_ok:
                streak.failed(_kind(exc), reason, limit, _fix_for(exc, session.setup.gateway), session.gateway.api_base)
            return failed(model, reason)
        except Exception:
            # not a gateway failure tailcal knows: settle the attempt before it propagates, so no
            # reservation is left held and a request that may have been billed is booked
            await _settle(session, token, worst, worst if wire.may_be_billed else 0.0, model)
            raise
        finally:
            WIRE.reset(wire_token)
        streak.scored()
        await _settle(session, token, worst, reply.cost_eur, reply.model)
        session.metrics.latency.labels(model=reply.model).observe(reply.latency_s)
        cache = session.caches[(reply.model, pass_index)]
        await _ride_out(partial(cache.store, phash, reply.difficulty, reply.factors, reply.model), "caching a score")
        session.metrics.requests.labels(model=reply.model, outcome="scored").inc()
        return ScoreRecord(
            candidate_id,
            pass_index,
            "scored",
            reply.difficulty,
            reply.factors,
            reply.model,
            reply.cost_eur + booked_eur,
            reply.latency_s,
        )


async def _before_send(session: ScoringSession, streak: _ErrorStreak) -> None:
    """Right before a request leaves, holding its gateway slot: its rpm slot, and no send once a
    stop was raised (GatewayError), checked after each wait (an rpm slot can be seconds away)."""
    streak.check()
    await _ride_out(session.limiter.acquire, "taking an rpm slot")
    streak.check()


UNREADABLE_FIX = (
    "The gateway answers 2xx with bodies that are not OpenAI chat completions as litellm reads them: check that "
    "gateway.url is the gateway's OpenAI-compatible base (…/v1) and what it sends."
)


def _unreadable(exc: Exception, wire: Wire, redact: Callable[[str], str]) -> str:
    """A failure reason for a 2xx reply litellm raised on (it reports it as an HTTP 500 no server sent)."""
    if not wire.complete:
        return f"reply cut: the gateway answered HTTP {wire.status} and closed the connection before the reply's end"
    message = (server_message(exc) or type(exc).__name__).split("Traceback", 1)[0].strip()
    return (
        f"unreadable reply: the gateway answered HTTP {wire.status} with a body litellm could not read "
        f"({redact(message)})"
    )


def _retryable(exc: Exception) -> bool:
    """A provider's bad moment that another attempt may get past: a timeout, an unreachable
    gateway, 408, 409, 429 or a 5xx."""
    if _timed_out(exc) or _unreachable(exc):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in {408, 409, 429} or status >= 500)


def _back_off_s(exc: Exception, retry: int, max_retries: int) -> float:
    """litellm's own back-off (as its Router waits): the gateway's `Retry-After` when it sent a
    reasonable one, else exponential from 0.5 s, with jitter."""
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    return float(
        litellm.calculate_retry_after(
            remaining_retries=max_retries - retry, max_retries=max_retries, response_headers=headers
        )
    )


async def _holding_lease(session: ScoringSession, token: str, call: Awaitable[T]) -> T:
    """Await `call` while renewing reservation `token`'s lease every third of it: the wait for an
    rpm slot, litellm building the request (its first call takes ~1 s) and the reply together can
    outlast a lease, and an expired reservation frees budget the call may still spend. Renewal
    stops when the call ends, before its reservation is settled."""
    renewal = asyncio.create_task(_renew_lease(session, token))
    try:
        return await call
    finally:
        renewal.cancel()


async def _renew_lease(session: ScoringSession, token: str) -> None:
    """Renew a reservation's lease every lease_s / 3 until cancelled; a Redis blip is left to the next renewal."""
    while True:
        await asyncio.sleep(session.ledger.lease_s / 3)
        try:
            if not session.ledger.renew(token):
                log.warning("a reservation's lease expired while its call was under way (event loop stalled?)")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("could not renew a reservation's lease (%s); retrying at the next renewal", type(exc).__name__)


async def _reserve(session: ScoringSession, worst_eur: float, token: str) -> Reservation:
    """Reserve, waiting while only in-flight reservations (not settled spend) block the call.
    A wait longer than RESERVE_WAIT_LOG_S says what it waits on (a process killed while holding
    reservations holds them until their leases expire)."""
    started = time.monotonic()
    said = False
    while True:
        reservation = await _ride_out(partial(session.ledger.reserve, worst_eur, token), "reserving budget")
        if reservation is not Reservation.WAIT:
            return reservation
        if not said and time.monotonic() - started > RESERVE_WAIT_LOG_S:
            said = True
            state = session.ledger.state()
            log.warning(
                "waiting for budget: €%.6f spent and €%.6f reserved by calls in flight leave no room for a call "
                "(€%.6f) under the €%.6g cap; reservations of a process that died are freed when their lease "
                "ends (%.0f s after they were taken)",
                state.spent_eur,
                state.reserved_eur,
                worst_eur,
                session.ledger.cap_eur,
                session.ledger.lease_s,
            )
        await asyncio.sleep(RESERVE_WAIT_S)


async def _settle(
    session: ScoringSession, token: str, reserved_eur: float, actual_eur: float, model: str, sent: bool = True
) -> None:
    if actual_eur > reserved_eur:
        log.warning("call cost €%.6f exceeded its reservation €%.6f (model %s)", actual_eur, reserved_eur, model)
    settlement = await _ride_out(
        partial(session.ledger.settle, token, actual_eur, sent), f"settling a €{actual_eur:.6f} call"
    )
    session.metrics.spend_eur.labels(ledger=session.ledger_label, model=model).inc(actual_eur)
    session.metrics.budget_spent_eur.labels(ledger=session.ledger_label).set(settlement.spent_eur)
    if settlement.alert_fired:
        session.metrics.budget_alerts.labels(ledger=session.ledger_label).inc()
        session.alerts.append(settlement.spent_eur)
        log.warning(
            "budget alert: €%.6g spent of €%.6g cap (threshold %.0f%%) for ledger %s",
            settlement.spent_eur,
            session.setup.budget.cap_eur,
            100 * session.setup.budget.alert_fraction,
            session.ledger_label,
        )
        if session.setup.budget.webhook_url:
            await _post_alert(session, settlement.spent_eur)


async def _ride_out(operation, doing: str):
    """Run a Redis operation (a function, or a coroutine function), retrying through a connection
    outage of up to REDIS_OUTAGE_S.

    Every operation retried here is idempotent: look-ups, cache stores, and reservations
    and settlements named by their token; an rpm slot whose reply was lost is taken again,
    which leaves one slot unused (fewer sends, never more)."""
    deadline = time.monotonic() + REDIS_OUTAGE_S
    delay = 0.1
    while True:
        try:
            result = operation()
            return await result if inspect.isawaitable(result) else result
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"Redis unreachable for {REDIS_OUTAGE_S:.0f} s while {doing} ({exc.__class__.__name__}): "
                    "restart Redis (or check REDIS_URL) and rerun; scored candidates are cached and not paid again"
                ) from exc
            log.warning("Redis unreachable while %s (%s); retrying in %.1f s", doing, exc.__class__.__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _post_alert(session: ScoringSession, spent_eur: float) -> None:
    payload = {
        "event": "tailcal.budget_alert",
        "ledger": session.ledger_label,
        "spent_eur": spent_eur,
        "cap_eur": session.setup.budget.cap_eur,
    }
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            await client.post(session.setup.budget.webhook_url, json=payload)
    except httpx.HTTPError as exc:
        log.warning("budget alert webhook failed (%s); the alert is still logged and counted", exc)


def _kind(exc: Exception) -> str:
    """The error's kind and HTTP status, e.g. "RateLimitError (HTTP 429)"; "APIConnectionError"
    when no gateway answered (litellm reports that as an HTTP 500 no server sent)."""
    if _unreachable(exc):
        return "APIConnectionError"
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__} (HTTP {status})" if status else type(exc).__name__


def _describe(exc: Exception, redact: Callable[[str], str]) -> str:
    """A failure reason: the error's kind, HTTP status and the gateway's own message, passed
    through `redact` (`GatewayClient.redact`) so no key or request payload is kept."""
    head = _kind(exc)
    if _timed_out(exc):
        return f"{head}: no reply within gateway.timeout_s, retries included"
    if _unreachable(exc):  # no server message: say so plainly
        return f"{head}: the gateway could not be reached"
    message = server_message(exc)
    return f"{head}: {redact(message)}" if message else head


def _timed_out(exc: BaseException) -> bool:
    """The gateway took the request and did not answer in time (a connect timeout is not one:
    nothing was sent, see `_unreachable`)."""
    return isinstance(exc, openai.APITimeoutError | TimeoutError | httpx.TimeoutException) and not _never_connected(exc)


def _never_connected(exc: BaseException) -> bool:
    return any(isinstance(c, httpx.ConnectError | httpx.ConnectTimeout) for c in _causes(exc))


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _unreachable(exc: Exception) -> bool:
    """No gateway answered: the connection was refused, reset or never made.

    litellm raises this as an InternalServerError (HTTP 500, "Connection error.") that no
    server sent; the exceptions it was raised from say what happened. A timeout is not one:
    a slow gateway is not a missing one (openai's APITimeoutError is an APIConnectionError).
    """
    if _never_connected(exc):  # refused, or no connection within gateway.timeout_s
        return True
    causes = _causes(exc)
    connection = (openai.APIConnectionError, httpx.TransportError, ConnectionError)
    return any(isinstance(c, connection) for c in causes) and not any(_timed_out(c) for c in causes)


def _final(exc: Exception) -> bool:
    """Whether this failure, as it reached the client after its retries, would come back
    on the next call, so that a row of them stops the run (`gateway.max_identical_errors`):

    - a 4xx other than timeout or conflict: the gateway judged the request itself (or the key);
    - a 429 that outlasted every retry and its Retry-After waits: the gateway's limit for this
      key is below what the client sends;
    - a gateway that cannot be reached, retries included.

    Timeouts and 5xx are a provider's bad moment: their candidates are recorded as failed and
    the run goes on. Failures count as identical by kind and status, not by message: gateways put
    counters and reset times in their messages.
    """
    if _unreachable(exc):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in {408, 409}


# The message a LiteLLM proxy without a database answers to any key but its master key.
_LITELLM_NO_DB = "No connected db"


def _fix_for(exc: Exception | None, gateway: GatewayConfig) -> str:
    """What to do about a failure that stopped the run (the reason names the cause)."""
    status = getattr(exc, "status_code", None)
    if exc is None:
        return "The model gives this answer for every image: fix what the reason names (a setting, the prompt)."
    if _unreachable(exc):
        return "Nothing answered at that address: check gateway.url, and that the gateway is running and reachable."
    if status in {401, 403}:
        return f"The gateway refused the virtual key: check the key in the {gateway.key_env} environment variable."
    if status == 400 and _LITELLM_NO_DB in (server_message(exc) or ""):
        return (
            "A LiteLLM proxy without a database answers this to every key but its master key: check the key "
            f"in the {gateway.key_env} environment variable."
        )
    if status == 404:
        return "The gateway does not know the model or route: check gateway.url and gateway.models[].name."
    if status == 429:
        return (
            f"The gateway kept refusing with 429 (its rate or budget limit for this key) through "
            f"gateway.max_retries={gateway.max_retries} retries: set gateway.rpm below the gateway's limit for this "
            "key, or have that limit raised."
        )
    return (
        "The gateway rejected the request as sent: make what its message names acceptable to it (a model that "
        "takes the parameter, a gateway setting)."
    )
