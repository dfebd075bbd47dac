"""Prometheus metrics for scoring, registered on a registry the caller owns.

A litellm `CustomLogger` counts failed attempts: every request the gateway failed, each
retry included.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tasks.errors import ServiceError
from tasks.scoring.offline_litellm import CustomLogger

if TYPE_CHECKING:
    from tasks.config import ScoringConfig

_SHARED: ScoringMetrics | None = None
_SERVED_PORT: int | None = None  # where this process serves /metrics, once it does
_SHARED_LOCK = threading.Lock()


@dataclass
class ScoringMetrics:
    registry: CollectorRegistry
    requests: Counter
    cache_lookups: Counter
    spend_eur: Counter
    latency: Histogram
    attempt_failures: Counter
    budget_spent_eur: Gauge
    budget_alerts: Counter
    budget_exhausted: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ScoringMetrics:
        registry = registry or CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "tailcal_scoring_requests",
                "Scoring outcomes per candidate and pass",
                ["model", "outcome"],
                registry=registry,
            ),
            cache_lookups=Counter("tailcal_cache_lookups", "Score cache look-ups", ["result"], registry=registry),
            spend_eur=Counter("tailcal_spend_eur", "Settled spend in EUR", ["ledger", "model"], registry=registry),
            latency=Histogram(
                "tailcal_gateway_latency_seconds",
                "Gateway call latency incl. retries",
                ["model"],
                buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30),
                registry=registry,
            ),
            attempt_failures=Counter(
                "tailcal_gateway_attempt_failures",
                "Failed gateway attempts (each may be retried)",
                ["model"],
                registry=registry,
            ),
            budget_spent_eur=Gauge("tailcal_budget_spent_eur", "Ledger spend in EUR", ["ledger"], registry=registry),
            budget_alerts=Counter("tailcal_budget_alerts", "Budget alerts fired", ["ledger"], registry=registry),
            budget_exhausted=Gauge(
                "tailcal_budget_exhausted", "1 when the cap stopped calls", ["ledger"], registry=registry
            ),
        )

    @classmethod
    def shared(cls) -> ScoringMetrics:
        """The process-wide metrics on Prometheus' default registry, so every shard of a run
        adds to the same counters (a metric name can be registered only once)."""
        global _SHARED
        with _SHARED_LOCK:
            if _SHARED is None:
                _SHARED = cls.create(REGISTRY)
            return _SHARED

    def serve(self, first_port: int, ports: int = 1) -> int:
        """Expose /metrics on 127.0.0.1 for the duration of the process, on the first free port of
        `first_port` … `first_port + ports − 1`; returns the port.

        Several processes score at once (a flow run and its Dask workers, two flow runs on one
        machine), each with its own counters: each takes a port of the range, and Prometheus
        scrapes the range (its queries sum over instances). A process serves once: later calls
        return the port it already has.

        Raises ServiceError when every port of the range is taken.
        """
        global _SERVED_PORT
        with _SHARED_LOCK:
            if _SERVED_PORT is not None:
                return _SERVED_PORT
            last, reason = first_port + ports - 1, ""
            for port in range(first_port, last + 1):
                try:
                    start_http_server(port, addr="127.0.0.1", registry=self.registry)
                except OSError as exc:
                    reason = exc.strerror or str(exc)
                    continue
                _SERVED_PORT = port
                return port
        where = f"127.0.0.1:{first_port}" if ports == 1 else f"any of 127.0.0.1:{first_port}-{last}"
        raise ServiceError(
            f"cannot serve metrics on {where} ({reason}): set scoring.metrics_port to a free port, or raise "
            f"scoring.metrics_ports (now {ports}) so each scoring process on this machine gets one"
        )


def serve_metrics(scoring: ScoringConfig) -> int | None:
    """Serve this process's scoring metrics when `scoring.metrics_port` is set; the port, or None."""
    if not scoring.metrics_port:
        return None
    return ScoringMetrics.shared().serve(scoring.metrics_port, scoring.metrics_ports)


class AttemptLogger(CustomLogger):
    """Counts every failed attempt litellm makes, retries included."""

    def __init__(self, metrics: ScoringMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        model = (kwargs.get("model") or "unknown").removeprefix("openai/")
        self._metrics.attempt_failures.labels(model=model).inc()
