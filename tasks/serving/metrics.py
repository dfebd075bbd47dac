"""Prometheus metrics of the inference service, on a registry the app owns (GET /metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0)
_DECISION_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


@dataclass(frozen=True)
class ServingMetrics:
    registry: CollectorRegistry
    requests: Counter
    routing_seconds: Histogram
    upstream_errors: Counter
    fallbacks: Counter
    request_seconds: Histogram
    inference_seconds: Histogram
    tier_latency_ms: Gauge
    difficulty: Histogram

    @classmethod
    def create(cls) -> ServingMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "tailcal_serving_requests", "Requests served, by the tier that answered", ["tier"], registry=registry
            ),
            routing_seconds=Histogram(
                "tailcal_serving_routing_decision_seconds",
                "Difficulty estimate + routing decision time",
                buckets=_DECISION_BUCKETS,
                registry=registry,
            ),
            upstream_errors=Counter(
                "tailcal_serving_upstream_errors", "Inference errors by failing tier", ["tier"], registry=registry
            ),
            fallbacks=Counter(
                "tailcal_serving_fallbacks", "Retries on a higher tier", ["from_tier", "to_tier"], registry=registry
            ),
            request_seconds=Histogram(
                "tailcal_serving_request_seconds",
                "Request latency in the service (decode → response), by tier",
                ["tier"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            inference_seconds=Histogram(
                "tailcal_serving_inference_seconds",
                "Inference + post-processing time, by tier",
                ["tier"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            tier_latency_ms=Gauge(
                "tailcal_serving_tier_latency_ms", "EWMA service time the router uses", ["tier"], registry=registry
            ),
            difficulty=Histogram(
                "tailcal_serving_input_difficulty",
                "In-service difficulty estimate of requests",
                buckets=tuple(i / 10 for i in range(1, 11)),
                registry=registry,
            ),
        )
