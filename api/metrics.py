"""Prometheus metrics of the API, on a registry of their own (served at ``/metrics``).

With ``--workers N`` each worker process keeps its own counters; scrape each worker or
run one worker per container.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)

REQUEST_SECONDS = Histogram(
    "recsys_api_request_duration_seconds",
    "Time inside the service per request, from receipt to the last body byte handed over.",
    ["route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RESPONSES = Counter(
    "recsys_api_responses",
    "Responses by route and HTTP status.",
    ["route", "status"],
    registry=REGISTRY,
)
LOOKUPS = Counter(
    "recsys_api_lookups",
    "User lookups by source: personal (the user's own list) or fallback (popular list).",
    ["source"],
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "recsys_api_redis_errors",
    "Redis commands that failed (connection refused, timeout, error reply).",
    registry=REGISTRY,
)
VERSION_AGE = Gauge(
    "recsys_api_live_version_age_seconds",
    "Seconds since the live version was generated (-1 when unknown).",
    registry=REGISTRY,
)
VERSION_CHANGES = Counter(
    "recsys_api_version_changes",
    "Times this process saw the live version pointer change.",
    registry=REGISTRY,
)

VARIANT_LOOKUPS = Counter(
    "recsys_api_variant_lookups",
    "Users answered, by A/B variant (control: the live version; treatment: recsys ab).",
    ["variant"],
    registry=REGISTRY,
)
CONTROL = VARIANT_LOOKUPS.labels(variant="control")
TREATMENT = VARIANT_LOOKUPS.labels(variant="treatment")
PERSONAL = LOOKUPS.labels(source="personal")
FALLBACK = LOOKUPS.labels(source="fallback")
