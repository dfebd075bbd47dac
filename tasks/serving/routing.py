"""The routing decision: which precision tier serves a request. Pure, no I/O.

Tiers are ordered from fastest to most precise (int8 < mixed < fp16). A request asks
for precision through `X-Priority` (1–10) and for speed through `X-Max-Latency-Ms`; the
service adds a cheap difficulty estimate of the image. `choose_tier` turns the three
into one tier and says why, so every decision can be logged and tested on its own.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tasks.config import ServingConfig

TIER_ORDER: tuple[str, ...] = ("int8", "mixed", "fp16")


class RoutingError(ValueError):
    """A routing input is out of range, or no tier is loaded."""


@dataclass(frozen=True)
class Decision:
    """The tier chosen for one request and a short reason (`+`-joined steps, for logs and headers)."""

    tier: str
    reason: str


def ordered(tiers: Iterable[str]) -> list[str]:
    """Known tiers from fastest to most precise; unknown names are refused."""
    tiers = set(tiers)
    unknown = tiers - set(TIER_ORDER)
    if unknown:
        raise RoutingError(f"unknown tier(s) {sorted(unknown)}: use {', '.join(TIER_ORDER)}")
    return [tier for tier in TIER_ORDER if tier in tiers]


def next_higher(tier: str, tiers_available: Iterable[str]) -> str | None:
    """The next more precise tier that is loaded, or None when `tier` is the most precise."""
    available = ordered(tiers_available)
    rank = TIER_ORDER.index(tier)
    return next((t for t in available if TIER_ORDER.index(t) > rank), None)


def _wanted_tier(priority: int | None, difficulty: float | None, config: ServingConfig) -> tuple[str, str]:
    if priority is not None and priority >= config.priority_fp16_min:
        return "fp16", "priority-high"
    if priority is not None and priority <= config.priority_int8_max:
        return "int8", "priority-low"
    if difficulty is None:
        return config.default_tier, "no-difficulty"
    if difficulty >= config.hard_difficulty:
        return "fp16", "difficulty-hard"
    if difficulty >= config.medium_difficulty:
        return "mixed", "difficulty-medium"
    return "int8", "difficulty-easy"


def _nearest_available(wanted: str, available: list[str]) -> tuple[str, str | None]:
    if wanted in available:
        return wanted, None
    rank = TIER_ORDER.index(wanted)
    higher = [t for t in available if TIER_ORDER.index(t) > rank]
    if higher:
        return higher[0], "unavailable-up"
    return available[-1], "unavailable-down"


def choose_tier(
    priority: int | None,
    max_latency_ms: float | None,
    difficulty: float | None,
    tiers_available: Mapping[str, float | None] | Iterable[str],
    config: ServingConfig,
) -> Decision:
    """Pick the tier for one request.

    1. Precision wanted: priority ≥ `priority_fp16_min` → fp16; ≤ `priority_int8_max` →
       int8; otherwise by difficulty (≥ `hard_difficulty` fp16, ≥ `medium_difficulty`
       mixed, else int8). A missing tier is replaced by the next more precise one.
    2. Latency: with a budget and per-tier latency estimates (a mapping tier → ms),
       step down to the most precise tier at or below the wanted one whose estimate fits;
       when none fits, the fastest tier serves and the reason says the budget is missed.
    """
    if priority is not None and not 1 <= priority <= 10:
        raise RoutingError(f"X-Priority must be 1..10, got {priority}")
    if max_latency_ms is not None and not (math.isfinite(max_latency_ms) and max_latency_ms > 0):
        raise RoutingError(f"X-Max-Latency-Ms must be a finite number > 0, got {max_latency_ms}")
    if difficulty is not None and not 0.0 <= difficulty <= 1.0:
        raise RoutingError(f"difficulty must be in [0, 1], got {difficulty}")
    latency = dict(tiers_available) if isinstance(tiers_available, Mapping) else dict.fromkeys(tiers_available)
    available = ordered(latency)
    if not available:
        raise RoutingError("no tier is loaded: give the service at least one IR")

    wanted, reason = _wanted_tier(priority, difficulty, config)
    tier, substituted = _nearest_available(wanted, available)
    steps = [reason] + ([substituted] if substituted else [])
    if max_latency_ms is not None:
        estimate = latency.get(tier)
        if estimate is not None and estimate > max_latency_ms:
            faster = [t for t in available if TIER_ORDER.index(t) < TIER_ORDER.index(tier)]
            fitting = [t for t in faster if latency.get(t) is not None and latency[t] <= max_latency_ms]
            if fitting:
                tier = fitting[-1]
                steps.append("latency-down")
            elif faster:
                tier = faster[0]
                steps.append("latency-unmet")
            else:
                steps.append("latency-unmet")
    return Decision(tier, "+".join(steps))


class LatencyTracker:
    """Per-tier service-time estimate in ms: an EWMA of served requests, seeded by a warm-up."""

    def __init__(self, alpha: float = 0.1) -> None:
        if not 0.0 < alpha <= 1.0:
            raise RoutingError(f"EWMA alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._ms: dict[str, float] = {}
        self._lock = threading.Lock()

    def seed(self, tier: str, ms: float) -> None:
        with self._lock:
            self._ms[tier] = ms

    def observe(self, tier: str, ms: float) -> float:
        with self._lock:
            previous = self._ms.get(tier)
            self._ms[tier] = ms if previous is None else previous + self.alpha * (ms - previous)
            return self._ms[tier]

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._ms)
