"""Serving features of issue #18 against a real Redis: top N, exclusions, reasons, one round trip.

The version is published by the batch's own writer and version lifecycle
(:func:`tests.publishing.publish_lists`), with a ``reason`` column as the nightly run writes
it, so the API reads the real format-2 layout (bucket hashes, head/tail split past 16 items).
Round trips are counted where they happen: each ``send_packed_command`` of redis-py's
asyncio connection is one request written to Redis (a pipeline is one).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from api.main import create_app
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.data import columns as C
from tests.publishing import publish_lists

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

TOP_N = 20
USERS = {u: [1000 * u + j for j in range(TOP_N)] for u in range(1, 41)}
"""40 users with 20 items each (head of 16 + tail of 4), distinct per user."""
SHORT = {41: [7, 8, 9]}
"""A user with a short list: refilled from the popular list."""
POPULAR = [90 + j for j in range(TOP_N)] + [7]
REASONS = ["r9.12", "b", "a", "t", "p"]


def recommendations() -> pl.DataFrame:
    rows = [
        (user, item, rank + 1, REASONS[rank % len(REASONS)])
        for user, items in {**USERS, **SHORT}.items()
        for rank, item in enumerate(items)
    ]
    schema = {C.USER: pl.Int64, C.ITEM: pl.Int64, C.RANK: pl.Int32, "reason": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row").with_columns(pl.lit(1.0).alias(C.SCORE))


class RoundTrips:
    """Counts requests written to Redis by redis-py's asyncio connections."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = Connection.send_packed_command

        async def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            await original(conn, command, check_health)

        monkeypatch.setattr(Connection, "send_packed_command", counted)

    def of(self, call: Any) -> tuple[int, Any]:
        before = self.count
        result = call()
        return self.count - before, result


@pytest.fixture
def published(redis_url: str, real_redis: redis.Redis, key_prefix: str) -> str:
    cfg = RedisConfig(url=redis_url, key_prefix=key_prefix)
    return publish_lists(real_redis, recommendations(), POPULAR, None, cfg)


@pytest.fixture
def api(redis_url: str, key_prefix: str, published: str) -> Iterator[TestClient]:
    app_settings = Settings(
        redis={"url": redis_url, "key_prefix": key_prefix},
        api={"current_cache_seconds": 0.0},  # expired at every request: still one round trip
    )
    with TestClient(create_app(app_settings)) as client:
        assert client.get("/v1/recommendations/1").status_code == 200  # version facts loaded
        yield client


class TestTopNExcludeExplain:
    def test_top_n_is_served_across_head_and_tail(self, api: TestClient) -> None:
        body = api.get("/v1/recommendations/3?k=20").json()
        assert (body["items"], body["source"], body["fallback_items"]) == (USERS[3], "personal", 0)

    def test_exclusions_refill_from_own_then_popular(self, api: TestClient) -> None:
        exclude = ",".join(str(i) for i in USERS[2][:18])
        body = api.get(f"/v1/recommendations/2?k=5&exclude={exclude}").json()
        assert body["items"] == [*USERS[2][18:], 90, 91, 92]
        assert body["fallback_items"] == 3
        short = api.get("/v1/recommendations/41?k=3&exclude=8,90").json()
        assert (short["items"], short["fallback_items"]) == ([7, 9, 91], 1)  # 7 not repeated

    def test_post_excludes_per_user(self, api: TestClient) -> None:
        body = {"user_ids": [1, 999], "exclude": {"1": USERS[1][:2], "999": [90]}}
        results = api.post("/v1/recommendations?k=2", json=body).json()["results"]
        assert [r["items"] for r in results] == [USERS[1][2:4], [91, 92]]
        assert [r["source"] for r in results] == ["personal", "fallback"]

    def test_too_many_exclusions_is_422(self, api: TestClient) -> None:
        exclude = ",".join(str(i) for i in range(101))
        assert api.get(f"/v1/recommendations/1?exclude={exclude}").status_code == 422
        body = {"user_ids": [1], "exclude": {"1": list(range(101))}}
        assert api.post("/v1/recommendations", json=body).status_code == 422
        assert api.get("/v1/recommendations/1?exclude=1,x").status_code == 422

    def test_explain_gives_one_reason_per_item(self, api: TestClient) -> None:
        body = api.get("/v1/recommendations/4?k=6&explain=true").json()
        assert body["reasons"] == [
            {"code": "repeat", "times": 9, "last_days": 12},
            {"code": "bought_with"},
            {"code": "als"},
            {"code": "trending"},
            {"code": "popular"},
            {"code": "repeat", "times": 9, "last_days": 12},
        ]
        unknown = api.get("/v1/recommendations/999?k=2&explain=true").json()
        assert unknown["reasons"] == [{"code": "popular"}] * 2
        assert "reasons" not in api.get("/v1/recommendations/4").json()


class TestOneRoundTrip:
    @pytest.mark.parametrize(
        "path",
        [
            "/v1/recommendations/5",  # known user (fast path)
            "/v1/recommendations/99999",  # unknown user: fallback
            "/v1/recommendations/5?k=20",  # head and tail
            "/v1/recommendations/5?exclude=5000,5001,90",
            "/v1/recommendations/99999?exclude=90&explain=true",
            "/v1/recommendations/5?explain=true&k=20",
        ],
    )
    def test_each_lookup_is_one_round_trip(
        self, api: TestClient, monkeypatch: pytest.MonkeyPatch, path: str
    ) -> None:
        trips = RoundTrips(monkeypatch)
        n, resp = trips.of(lambda: api.get(path))
        assert resp.status_code == 200
        assert n == 1

    def test_a_batch_of_1000_is_one_round_trip(
        self, api: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ids = list(range(1, 1001))
        body = {"user_ids": ids, "exclude": {"1": [1000]}}
        trips = RoundTrips(monkeypatch)
        n, resp = trips.of(lambda: api.post("/v1/recommendations?k=20&explain=true", json=body))
        assert resp.status_code == 200
        assert n == 1
        results = resp.json()["results"]
        assert [r["source"] for r in results[:42]] == ["personal"] * 41 + ["fallback"]


ITEMS_SEEN = sorted({i for items in USERS.values() for i in items[:3]} | set(POPULAR))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user=st.sampled_from([1, 2, 17, 41, 999]),
    k=st.integers(min_value=1, max_value=40),
    exclude=st.lists(
        st.one_of(st.sampled_from(ITEMS_SEEN), st.integers(0, 2**32)), max_size=100, unique=True
    ),
)
def test_exclusions_fuzzed(api: TestClient, user: int, k: int, exclude: list[int]) -> None:
    """Any exclude list: k distinct items, none excluded, own items first, as far as the
    user's list and the popular list allow."""
    query = f"?k={k}" + (f"&exclude={','.join(map(str, exclude))}" if exclude else "")
    body = api.get(f"/v1/recommendations/{user}{query}").json()
    items = body["items"]
    own = [*USERS.get(user, []), *SHORT.get(user, [])]
    available = list(dict.fromkeys(i for i in [*own, *POPULAR] if i not in set(exclude)))
    assert items == available[:k]
    assert len(set(items)) == len(items) == min(k, len(available))
    assert not set(items) & set(exclude)
    assert body["fallback_items"] == sum(1 for i in items if i not in own)
