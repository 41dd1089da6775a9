"""Prometheus metrics of the API, on a registry of their own (served at ``/metrics``).

With ``--workers N`` each worker process keeps its own counters; scrape each worker or
run one worker per container.
"""

from __future__ import annotations

import math
import os
import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

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

LATENCY = "recsys_api_request_duration_seconds"
LATENCY_HELP = (
    "Time inside the service per request, from receipt to the last body byte handed over."
)
RESPONSES = "recsys_api_responses"
RESPONSES_HELP = "Responses by route and HTTP status."


class Requests:
    """Every request's latency (histogram ``LATENCY`` by route) and status (counter
    ``RESPONSES`` by route and status), counted in plain floats.

    prometheus_client's ``Histogram`` and ``Counter`` guard each value with a lock, and
    observing one request through them cost more than a scenario lookup's own bookkeeping
    (#27). The service observes each request once, from the event loop's thread, and serves
    ``/metrics`` from that thread too, so the counts need no lock. :meth:`collect` exposes
    exactly the families those classes would: names, help, labels, cumulative buckets,
    ``_count``, ``_sum``, ``_total`` and ``_created`` (unless
    ``PROMETHEUS_DISABLE_CREATED_SERIES`` is set), in the order the series first appeared.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._bounds = (*LATENCY_BUCKETS, math.inf)
        self._latency: dict[str, list[float]] = {}
        """route -> count per bucket, then the sum of the seconds, then when created."""
        self._responses: dict[tuple[str, str], list[float]] = {}
        """(route, status) -> [count, when created]."""
        self._series: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
        registry.register(self)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one request of ``route``, answered with ``status`` after ``seconds``."""
        series = self._series.get((route, status))
        if series is None:
            series = self._add(route, status)
        latency, responses = series
        latency[bisect_left(self._bounds, seconds)] += 1.0  # the first bound >= seconds
        latency[-2] += seconds
        responses[0] += 1.0

    def _add(self, route: str, status: int) -> tuple[list[float], list[float]]:
        now = time.time()
        latency = self._latency.setdefault(route, [0.0] * len(self._bounds) + [0.0, now])
        responses = self._responses.setdefault((route, str(status)), [0.0, now])
        self._series[route, status] = (latency, responses)
        return latency, responses

    def collect(self) -> Iterator[Metric]:
        """The two metric families, as prometheus_client's classes would expose them."""
        created = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
            "true",
            "1",
            "t",
        )
        histogram = Metric(LATENCY, LATENCY_HELP, "histogram")
        for route, counts in list(self._latency.items()):
            total = 0.0
            for bound, count in zip(self._bounds, counts, strict=False):
                total += count
                labels = {"route": route, "le": floatToGoString(bound)}
                histogram.add_sample(LATENCY + "_bucket", labels, total)
            histogram.add_sample(LATENCY + "_count", {"route": route}, total)
            histogram.add_sample(LATENCY + "_sum", {"route": route}, counts[-2])
            if created:
                histogram.add_sample(LATENCY + "_created", {"route": route}, counts[-1])
        yield histogram
        counter = Metric(RESPONSES, RESPONSES_HELP, "counter")
        for (route, status), (count, since) in list(self._responses.items()):
            labels = {"route": route, "status": status}
            counter.add_sample(RESPONSES + "_total", labels, count)
            if created:
                counter.add_sample(RESPONSES + "_created", labels, since)
        yield counter


REQUESTS = Requests(REGISTRY)
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
