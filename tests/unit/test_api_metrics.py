"""The service's request metrics (#27): the lock-free collector exposes exactly what
prometheus_client's ``Histogram`` and ``Counter`` expose for the same requests."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from api import metrics

REQUESTS = [
    ("/v1/recommendations/{user_id}", 200, 0.0003),
    ("/v1/recommendations/{user_id}", 200, 0.00025),  # on a bound: counted in it
    ("/v1/recommendations/{user_id}", 422, 0.0001),
    ("/readyz", 200, 0.002),
    ("/v1/recommendations/{user_id}", 503, 1.5),  # past the last bound: +Inf only
    ("unmatched", 404, 0.0),
]


def exposed(registry: CollectorRegistry) -> str:
    """The registry's text, with the ``_created`` timestamps made equal."""
    text = generate_latest(registry).decode()
    return re.sub(r"^(\S+_created\{.*\}) \S+$", r"\1 T", text, flags=re.MULTILINE)


def reference() -> str:
    """The same requests through prometheus_client's own classes."""
    registry = CollectorRegistry(auto_describe=True)
    latency = Histogram(
        metrics.LATENCY,
        metrics.LATENCY_HELP,
        ["route"],
        buckets=metrics.LATENCY_BUCKETS,
        registry=registry,
    )
    responses = Counter(
        metrics.RESPONSES, metrics.RESPONSES_HELP, ["route", "status"], registry=registry
    )
    for route, status, seconds in REQUESTS:
        latency.labels(route=route).observe(seconds)
        responses.labels(route=route, status=str(status)).inc()
    return exposed(registry)


@pytest.mark.parametrize("created", [True, False])
def test_exposes_what_prometheus_client_would(
    created: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches a request counted in the wrong bucket (a bound is ``le``: inclusive), buckets
    that are not cumulative, a wrong sum, count or label, or a missing ``_created``."""
    if not created:
        monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "true")
    registry = CollectorRegistry(auto_describe=True)
    requests = metrics.Requests(registry)
    for route, status, seconds in REQUESTS:
        requests.observe(route, status, seconds)
    if not created:  # prometheus_client reads the variable when it is imported
        from prometheus_client import disable_created_metrics, enable_created_metrics  # noqa: PLC0415

        disable_created_metrics()
        try:
            expected = reference()
        finally:
            enable_created_metrics()
    else:
        expected = reference()
    assert exposed(registry) == expected
    assert ("_created" in expected) is created
