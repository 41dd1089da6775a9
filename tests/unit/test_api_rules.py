"""Scenarios, rules, availability, promotions and the new-items list on the lookups, against
fakeredis (#26, #27): the world of :mod:`tests.api_rules_data`, published by the writer."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from api.live import LiveVersion
from api.main import create_app
from api.models import BatchResponse, Recommendation
from api.service import Lookup
from api.shop import Options, ShopCache
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.publish import keys, shop_keys, shop_state
from recsys_batch.rules import RuleSet
from tests.api_rules_data import (
    ITEMS,
    NEW_REASONS,
    POPULAR,
    RULE_CASES,
    SHOP_CASES,
    USERS,
    mark_shop,
    publish_world,
)
from tests.publishing import publish_users

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PREFIX = "recsys"
CFG = RedisConfig(key_prefix=PREFIX, user_buckets=3, retry_backoff_seconds=0)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def batch(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """The batch's and the CLI's (sync) client, on the API's server."""
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def world(batch: fakeredis.FakeRedis) -> str:
    return publish_world(batch, CFG)


def client_for(server: fakeredis.FakeServer, fast_path: bool = True) -> TestClient:
    settings = Settings(api={"current_cache_seconds": 60.0, "shop_cache_seconds": 0.0})
    fake = fakeredis.FakeAsyncRedis(server=server)
    return TestClient(create_app(settings, redis_client=fake, fast_path=fast_path))


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
def api(
    request: pytest.FixtureRequest, server: fakeredis.FakeServer, world: str
) -> Iterator[TestClient]:
    with client_for(server, request.param) as client:
        yield client


@pytest.mark.parametrize(("rule", "query", "expected"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_each_rule_gives_its_answer(
    api: TestClient, rule: str, query: str, expected: list[int]
) -> None:
    """The worked answers of :data:`RULE_CASES` (rules, scenarios, an override, new_only)."""
    resp = api.get(f"/v1/recommendations/1?{query}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["items"] == expected
    k = int(query.rsplit("k=", 1)[1].split("&")[0])
    assert body["short_by"] == k - len(expected)
    Recommendation.model_validate(body)


def test_shop_state_applies_to_every_lookup(api: TestClient, batch: fakeredis.FakeRedis) -> None:
    """Unavailable items (every store, the request's store) are left out of plain and ruled
    lookups alike; catches a plain path that ignores availability."""
    mark_shop(batch, CFG)
    for _, query, expected in SHOP_CASES:
        assert api.get(f"/v1/recommendations/1?{query}").json()["items"] == expected, query
    unknown = api.get("/v1/recommendations/99?k=3").json()
    assert unknown["items"] == [91, 92, 93]  # 11 (in the popular list) is unavailable


def test_new_only_explains_with_the_new_items_reasons(api: TestClient) -> None:
    body = api.get("/v1/recommendations/1?new_only=true&k=4&explain=true").json()
    assert body["items"] == [31, 32, 33, 91]
    assert body["reasons"] == [*NEW_REASONS, {"code": "popular"}]
    assert body["sources"] == ["new", "new", "new", "popular"]
    assert (body["source"], body["fallback_items"], body["new_only"]) == ("personal", 1, True)


def test_new_only_without_a_list_refills_from_popular(api: TestClient) -> None:
    """User 2 has no new-items list; an unknown user is a fallback."""
    assert api.get("/v1/recommendations/2?new_only=true&k=2").json()["items"] == [91, 92]
    unknown = api.get("/v1/recommendations/99?new_only=true&k=2").json()
    assert (unknown["items"], unknown["source"]) == ([91, 92], "fallback")


def test_promoted_items_lead_and_are_counted(api: TestClient) -> None:
    body = api.get("/v1/recommendations/1?promoted_first=2&k=3&explain=true").json()
    assert (body["items"], body["promoted"]) == ([15, 11, 12], 1)
    assert body["reasons"][1] == {"code": "repeat", "times": 3, "last_days": 4}


def test_post_applies_body_options_to_every_user(api: TestClient) -> None:
    payload = {"user_ids": [1, 2, 99], "scenario": "weekend", "rules": {"min_new": 1}}
    resp = api.post("/v1/recommendations?k=4", json=payload)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    BatchResponse.model_validate(body)
    assert (body["scenario"], body["rules"]) == ("weekend", {"min_new": 1, "max_per_category": 1})
    # min_new 1 over the scenario's 2: one place less is reserved for items never bought
    assert body["results"][0]["items"] == [12, 13, 15, 31]
    new_only = api.post("/v1/recommendations?k=3", json={"user_ids": [1], "new_only": True})
    assert new_only.json()["results"][0]["items"] == [31, 32, 33]
    listed = {"user_ids": [1], "rules": {"departments": ["PRODUCE"], "brands": ["national"]}}
    produce = api.post("/v1/recommendations?k=3", json=listed)
    assert produce.status_code == 200, produce.text  # a list value (unhashable) is kept as one
    assert produce.json()["results"][0]["items"] == [13, 32]


def test_post_store_leaves_out_the_stores_items(
    api: TestClient, batch: fakeredis.FakeRedis
) -> None:
    mark_shop(batch, CFG)
    body = api.post("/v1/recommendations?k=3", json={"user_ids": [1], "store": 7}).json()
    assert body["results"][0]["items"] == [13, 14, 15]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("scenario=nope", "scenario"),
        ("scenario=%2A", "scenario"),
        ("min_neww=2", "min_neww"),
        ("min_new=-1", "min_new"),
        ("max_per_category=0", "max_per_category"),
        ("departments=", "departments"),
        ("price_min=cheap", "price_min"),
        ("price_min=5&price_max=1", "price_min"),
        ("scenario=weekend&min_new=1001", "min_new"),
    ],
)
def test_bad_scenario_or_rule_is_422_naming_it(api: TestClient, query: str, named: str) -> None:
    resp = api.get(f"/v1/recommendations/1?{query}")
    assert resp.status_code == 422
    detail = resp.json()["detail"][0]
    assert detail["loc"] == ["query", named]
    assert named in detail["msg"]


def test_a_request_rule_contradicting_the_scenario_is_422(
    api: TestClient, batch: fakeredis.FakeRedis
) -> None:
    shop_state.set_scenario(batch, "cheap", RuleSet(price_max=2.0), CFG)
    resp = api.get("/v1/recommendations/1?scenario=cheap&price_min=3")
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["query", "price_min"]


def test_unknown_scenario_lists_the_stored_ones(api: TestClient) -> None:
    msg = api.get("/v1/recommendations/1?scenario=nope").json()["detail"][0]["msg"]
    assert "one_per_category, weekend" in msg


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"user_ids": [1], "scenario": "nope"}, "scenario"),
        ({"user_ids": [1], "rules": {"min_neww": 1}}, "min_neww"),
        ({"user_ids": [1], "rules": {"max_per_category": 0}}, "max_per_category"),
    ],
)
def test_post_bad_scenario_or_rule_is_422_naming_it(
    api: TestClient, payload: dict[str, Any], named: str
) -> None:
    resp = api.post("/v1/recommendations", json=payload)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", named]


def test_fast_path_and_route_answer_ruled_lookups_identically(
    server: fakeredis.FakeServer, world: str
) -> None:
    paths = [f"/v1/recommendations/1?{q}" for _, q, _ in RULE_CASES] + [
        "/v1/recommendations/1?scenario=nope"
    ]
    with client_for(server, True) as fast, client_for(server, False) as slow:
        for path in paths:
            a, b = fast.get(path), slow.get(path)
            assert (a.status_code, a.content) == (b.status_code, b.content), path


def test_a_corrupt_stored_scenario_is_503_for_its_requests_only(
    api: TestClient, batch: fakeredis.FakeRedis
) -> None:
    batch.hset(shop_keys.scenarios_key(PREFIX), "broken", "{not json")
    resp = api.get("/v1/recommendations/1?scenario=broken")
    assert resp.status_code == 503
    assert resp.json()["error"] == "corrupt_value"
    assert "broken" in resp.json()["detail"]
    assert api.get("/v1/recommendations/1?scenario=weekend").status_code == 200


def test_attributes_are_read_once_per_version(
    api: TestClient, batch: fakeredis.FakeRedis, world: str
) -> None:
    """The items hash is immutable per version: a ruled lookup uses the copy read when the
    version was loaded (changing the hash under it changes nothing), and a new version
    brings its own. Catches reading the attributes per request (or never again)."""
    query = "/v1/recommendations/1?departments=MEAT&k=1"
    assert api.get(query).json()["items"] == [33]
    batch.hset(keys.items_key(world, PREFIX), "33", json.dumps({"department": "DELI"}))
    assert api.get(query).json()["items"] == [33]
    items = {**ITEMS, 33: {**ITEMS[33], "department": "DELI"}}
    publish_users(batch, USERS, POPULAR, CFG, items=items)
    assert api.get(query).json()["items"] == []


class TestShopStaleness:
    """The shop state read with a lookup is used for ``shop_seconds`` from the send of that
    read, and no longer: driven by a clock the test moves (no sleeps)."""

    @staticmethod
    def lookup(server: fakeredis.FakeServer, seconds: float, now: list[float]) -> Lookup:
        fake = fakeredis.FakeAsyncRedis(server=server)
        return Lookup(fake, PREFIX, 60.0, shop_seconds=seconds, clock=lambda: now[0])

    def test_a_changed_scenario_applies_exactly_when_the_copy_expires(
        self, server: fakeredis.FakeServer, batch: fakeredis.FakeRedis, world: str
    ) -> None:
        shop_state.set_scenario(batch, "live", RuleSet(max_per_category=2), CFG)
        now = [100.0]
        lookup = self.lookup(server, 1.0, now)

        async def twice(times: list[float]) -> list[list[int]]:
            found = []
            for at in times:
                now[0] = at
                found.append((await lookup.one(1, 5, options=Options(scenario="live")))[1].items)
            return found

        async def scenario_changes_then(times: list[float]) -> list[list[int]]:
            first = await twice(times[:1])  # reads the state at 100.0
            shop_state.set_scenario(batch, "live", RuleSet(max_per_category=1), CFG)
            return first + await twice(times[1:])

        got = asyncio.run(scenario_changes_then([100.0, 100.5, 100.999, 101.0, 101.2]))
        old, new = USERS[1][:5], [11, 13, 15, 31, 32]
        assert got == [old, old, old, new, new]

    def test_zero_seconds_reads_the_state_with_every_lookup(
        self, server: fakeredis.FakeServer, batch: fakeredis.FakeRedis, world: str
    ) -> None:
        now = [5.0]
        lookup = self.lookup(server, 0.0, now)

        async def around_a_mark() -> tuple[list[int], list[int]]:
            before = (await lookup.one(1, 3))[1].items
            shop_state.mark_unavailable(batch, [12], CFG)
            return before, (await lookup.one(1, 3))[1].items  # same clock reading

        assert asyncio.run(around_a_mark()) == ([11, 12, 13], [11, 13, 14])


def test_a_ruling_is_dropped_with_the_shop_state_it_was_built_from() -> None:
    """A ruling (the engine's prepared part) is kept per store until that store's set, or the
    shared state, is read again and differs. Catches a ruling that keeps serving items marked
    unavailable since it was built (or one store's ruling applied to another), or one that a
    changed promotion list leaves in place; and rulings (their verdicts) built again after
    every read of an unchanged state (a CPU cost per request, #27)."""
    shop = ShopCache(PREFIX, 1.0, clock=lambda: 10.0, wall=lambda: 0.0)
    live = LiveVersion("v1", 2, None, None, (11, 12, 13), 1, "recsys:v:v1:items")
    options = Options(scenario="s", store=3)
    scenarios = [b"s", json.dumps({"min_new": 0}).encode()]
    shop.update([None, 3], [scenarios, [b"11"], [], [b"12"]], 1.0)
    first = shop.ruling(options, live)[0]
    assert first.popular == (13,)
    assert shop.ruling(options, live)[0] is first  # kept: built once per read
    assert shop.ruling(Options(scenario="s"), live)[0].popular == (12, 13)
    shop.update([3], [[b"13"]], 2.0)  # store 3 read again
    assert shop.ruling(options, live)[0].popular == (12,)
    assert shop.ruling(Options(scenario="s"), live)[0].popular == (12, 13)  # not store 3's
    shop.update([None], [scenarios, [], []], 3.0)  # the shared state read again
    assert shop.ruling(options, live)[0].popular == (11, 12)
    assert shop.ruling(Options(scenario="s"), live)[0].popular == (11, 12, 13)
    kept = shop.ruling(options, live)[0]
    shop.update([None, 3], [scenarios, [], [], [b"13"]], 4.0)  # read again, nothing changed
    assert shop.ruling(options, live)[0] is kept
    shop.update([None], [scenarios, [], [b"12"]], 5.0)  # a promotion starts
    assert shop.ruling(options, live)[0].promoted == {12}


def test_a_late_reply_of_an_older_read_never_replaces_a_newer_one() -> None:
    """Pipelines on two connections may come back out of order: the state kept is the one
    read by the pipeline sent last. Catches an update that keeps whatever arrives last."""
    now = [10.0]
    shop = ShopCache(PREFIX, 1.0, clock=lambda: now[0], wall=lambda: 0.0)
    _, parts_old, sent_old = shop.reads([3])
    now[0] = 10.5
    _, parts_new, sent_new = shop.reads([3])  # not back yet: carried again
    assert parts_old == parts_new == [None, 3]
    shop.update(parts_new, [[], [b"2"], [], [b"5"]], sent_new)
    shop.update(parts_old, [[], [b"1"], [], [b"4"]], sent_old)
    assert shop.unavailable_at(3) == {2, 5}
    now[0] = 11.49
    assert shop.reads([3])[1] == []  # fresh until 10.5 + 1.0
    now[0] = 11.5
    assert shop.reads([3])[1] == [None, 3]
