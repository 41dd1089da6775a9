"""Scenarios, rules, availability and promotions against a real Redis (#26, #27).

The world of :mod:`tests.api_rules_data` is published by the batch's writer and stored with
``recsys_batch.publish.shop_state`` (what ``recsys scenario|catalog|promo`` call); the API
reads it through redis-py's wire. Each rule has its worked answer; a lookup with a scenario,
a store, unavailable items and promotions is one round trip; a scenario changed while the
API serves load applies to every request sent ``shop_cache_seconds`` after the change, with
no 5xx.
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from api.main import create_app
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.publish import shop_state
from recsys_batch.rules import RuleSet
from tests.api_rules_data import RULE_CASES, SHOP_CASES, USERS, mark_shop, publish_world
from tests.integration.test_api_redis import ServerThread
from tests.integration.test_api_serving import RoundTrips
from tests.integration.test_cluster import cluster_url  # noqa: F401 - a fixture, reused
from tests.under_load import WAIT_SECONDS

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration


def settings_for(url: str, prefix: str, shop_seconds: float) -> Settings:
    return Settings(
        redis={"url": url, "key_prefix": prefix},
        api={"current_cache_seconds": 0.0, "shop_cache_seconds": shop_seconds},
    )


@pytest.fixture
def cfg(redis_url: str, key_prefix: str) -> RedisConfig:
    return RedisConfig(url=redis_url, key_prefix=key_prefix, retry_backoff_seconds=0)


@pytest.fixture
def world(real_redis: redis.Redis, cfg: RedisConfig) -> str:
    return publish_world(real_redis, cfg)


@pytest.fixture
def api(redis_url: str, key_prefix: str, world: str) -> Iterator[TestClient]:
    """Shop state read with every lookup (``shop_cache_seconds = 0``)."""
    with TestClient(create_app(settings_for(redis_url, key_prefix, 0.0))) as client:
        assert client.get("/v1/recommendations/1").status_code == 200  # version loaded
        yield client


@pytest.mark.parametrize(("rule", "query", "expected"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_each_rule_on_real_redis(
    api: TestClient, rule: str, query: str, expected: list[int]
) -> None:
    """Every rule (and a scenario, an override, new_only) gives its worked answer."""
    resp = api.get(f"/v1/recommendations/1?{query}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["items"] == expected


@pytest.mark.parametrize(("case", "query", "expected"), SHOP_CASES, ids=[c[0] for c in SHOP_CASES])
def test_unavailable_items_on_real_redis(
    api: TestClient,
    real_redis: redis.Redis,
    cfg: RedisConfig,
    case: str,
    query: str,
    expected: list[int],
) -> None:
    mark_shop(real_redis, cfg)
    assert api.get(f"/v1/recommendations/1?{query}").json()["items"] == expected


def test_an_expired_unavailability_stops_applying(
    api: TestClient, real_redis: redis.Redis, cfg: RedisConfig
) -> None:
    """A mark whose TTL ended no longer applies, whether or not its member was removed."""
    shop_state.mark_unavailable(real_redis, [11], cfg, ttl_hours=1, now=time.time() - 7200)
    assert api.get("/v1/recommendations/1?k=1").json()["items"] == [11]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/recommendations/1?scenario=weekend&store=7",
        "/v1/recommendations/1?scenario=weekend&store=7&promoted_first=2&explain=true",
        "/v1/recommendations/99?new_only=true&store=8",
        "/v1/recommendations/1?new_only=true&explain=true&exclude=32",
        "/v1/recommendations/1?store=7",
    ],
)
def test_a_ruled_lookup_is_one_round_trip(
    api: TestClient,
    real_redis: redis.Redis,
    cfg: RedisConfig,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    """With a scenario, a store, unavailable items and a promotion, all read in the same
    round trip as the lists (the shop state read with every lookup here)."""
    mark_shop(real_redis, cfg)
    trips = RoundTrips(monkeypatch)
    n, resp = trips.of(lambda: api.get(path))
    assert resp.status_code == 200, resp.text
    assert n == 1


def test_a_ruled_batch_is_one_round_trip(
    api: TestClient, real_redis: redis.Redis, cfg: RedisConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark_shop(real_redis, cfg)
    payload = {"user_ids": list(range(1, 501)), "scenario": "weekend", "store": 7}
    trips = RoundTrips(monkeypatch)
    n, resp = trips.of(lambda: api.post("/v1/recommendations?k=4&explain=true", json=payload))
    assert resp.status_code == 200, resp.text
    assert n == 1
    assert resp.json()["results"][0]["items"] == [14, 15, 31, 32]  # 11, 12 unavailable


class Readers:
    """Threads asking for user 1 under scenario ``live`` as fast as they can, recording
    (send time, status, items) of each answer."""

    def __init__(self, base: str, n: int) -> None:
        self.base = base
        self.rows: list[tuple[float, int, list[int]]] = []
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._read, daemon=True) for _ in range(n)]

    def _read(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    resp = client.get("/v1/recommendations/1?scenario=live&k=5")
                    row = (sent, resp.status_code, resp.json().get("items", []))
                except httpx.HTTPError as exc:
                    row = (sent, 599, [repr(exc)])  # type: ignore[list-item]
                with self.changed:
                    self.rows.append(row)
                    self.changed.notify_all()

    def wait_for(self, predicate: Any, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.rows), timeout=WAIT_SECONDS):
                msg = f"no {what} within {WAIT_SECONDS} s ({len(self.rows)} answers)"
                raise AssertionError(msg)

    def __enter__(self) -> Readers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=20)


def test_a_scenario_set_under_load_applies_within_the_bound(
    redis_url: str, key_prefix: str, world: str, real_redis: redis.Redis, cfg: RedisConfig
) -> None:
    """``recsys scenario set`` while 4 clients read: no answer is a 5xx, and every request
    sent ``shop_cache_seconds`` after the write returned honours the new rules (requests
    sent in between may get either). Catches a cache kept past its bound, or one refreshed
    by a read that was already in flight when the scenario changed."""
    bound = 0.5
    shop_state.set_scenario(real_redis, "live", RuleSet(max_per_category=2), cfg)
    old, new = USERS[1][:5], [11, 13, 15, 31, 32]
    app = create_app(settings_for(redis_url, key_prefix, bound))
    with ServerThread(app) as base, Readers(base, 4) as readers:
        readers.wait_for(lambda rows: any(r[2] == old for r in rows), "answer under the old rules")
        shop_state.set_scenario(real_redis, "live", RuleSet(max_per_category=1), cfg)
        written = time.monotonic()
        readers.wait_for(
            lambda rows: sum(r[0] > written + bound for r in rows) >= 20,
            "20 answers sent after the bound",
        )
    rows = list(readers.rows)
    assert not [r for r in rows if r[1] != 200], "every answer is a 200"
    late = [r[2] for r in rows if r[0] > written + bound]
    assert late and all(items == new for items in late)
    assert all(r[2] in (old, new) for r in rows)


def test_rules_and_shop_state_on_a_redis_cluster(cluster_url: str) -> None:  # noqa: F811
    """On a cluster the pipeline goes through redis-py (by slot): the same answers."""
    from redis.cluster import RedisCluster  # noqa: PLC0415

    prefix = f"rules{random.randrange(16**6):06x}"
    client = RedisCluster.from_url(cluster_url.replace("redis+cluster", "redis"))
    cfg = RedisConfig(key_prefix=prefix, user_buckets=8, retry_backoff_seconds=0)
    try:
        publish_world(client, cfg)
        mark_shop(client, cfg)
        app = create_app(settings_for(cluster_url, prefix, 0.0))
        with TestClient(app) as http:
            assert app.state.lookup.cluster
            for _, query, expected in SHOP_CASES:
                assert http.get(f"/v1/recommendations/1?{query}").json()["items"] == expected
            ruled = http.get("/v1/recommendations/1?scenario=weekend&store=7&k=4").json()
        assert ruled["items"] == [14, 15, 31, 32]
    finally:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()
