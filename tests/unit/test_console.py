"""The console page's endpoints and static files, against fakeredis (issue #19)."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from api.main import STATIC_DIR, create_app
from api.routes.console import LivePanel, Popular, Runs
from recsys_batch.config import Settings
from recsys_batch.publish import keys

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PREFIX = "recsys"
META = {
    "format": str(keys.FORMAT),
    "state": keys.STATE_COMPLETE,
    "version": "v2",
    "created_at": "2026-11-28T03:00:00+00:00",
    "run_id": "20261128T030000Z-abcd",
    "users": "2469",
    "items": "7",
    "data_source": "completejourney (bundled)",  # what a run on the bundled data publishes
    "first_day": "1",
    "last_day": "711",
    "metrics": json.dumps({"precision@5": 0.2134, "recall@5": 0.08}),
    "durations": json.dumps({"load": 1.5}),
}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def seed(client: Any) -> None:
    await client.hset(keys.meta_key("v2", PREFIX), mapping=META)
    await client.set(keys.popular_key("v2", PREFIX), "91,92,93")
    await client.hset(
        keys.items_key("v2", PREFIX),
        mapping={"91": json.dumps({"department": "PRODUCE", "brand": "National"})},
    )
    await client.set(keys.previous_key(PREFIX), "v1")
    await client.set(keys.current_key(PREFIX), "v2")


@pytest.fixture
def fake() -> Any:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


def client_for(fake: Any, cache_seconds: float) -> TestClient:
    settings = Settings(api={"current_cache_seconds": cache_seconds})
    return TestClient(create_app(settings, redis_client=fake))


@pytest.fixture
def api(fake: Any) -> Iterator[TestClient]:
    run(seed(fake))
    with client_for(fake, 0.0) as client:
        yield client


class TestLiveVersion:
    def test_meta_previous_and_no_experiment(self, api: TestClient) -> None:
        body = api.get("/v1/versions/live").json()
        LivePanel.model_validate(body)
        assert (body["version"], body["users"], body["first_day"], body["last_day"]) == (
            "v2",
            2469,
            1,
            711,
        )
        assert body["metrics"]["precision@5"] == 0.2134
        assert (body["previous_version"], body["experiment"]) == ("v1", None)
        assert body["data_source"] == "completejourney (bundled)"
        assert body["age_seconds"] > 0

    def test_experiment_hash_shown_as_written(self, api: TestClient, fake: Any) -> None:
        run(fake.hset(f"{PREFIX}:ab", mapping={"name": "ranker-b", "share": "0.1"}))
        body = api.get("/v1/versions/live").json()
        assert body["experiment"] == {"name": "ranker-b", "share": "0.1"}

    def test_no_live_version_is_503(self, fake: Any) -> None:
        with client_for(fake, 0.0) as client:
            answer = client.get("/v1/versions/live")
        assert answer.status_code == 503
        assert answer.json()["error"] == "no_live_version"

    def test_cached_like_the_pointer(self, fake: Any) -> None:
        run(seed(fake))
        with client_for(fake, 60.0) as client:
            assert client.get("/v1/versions/live").json()["users"] == 2469
            run(fake.hset(keys.meta_key("v2", PREFIX), "users", "1"))
            assert client.get("/v1/versions/live").json()["users"] == 2469


class TestRuns:
    def test_newest_first_unreadable_skipped(self, api: TestClient, fake: Any) -> None:
        assert api.get("/v1/runs").json() == {"runs": []}
        for n, status in enumerate(["published", "gate-refused"]):
            run(
                fake.lpush(keys.runs_key(PREFIX), json.dumps({"run_id": f"r{n}", "status": status}))
            )
        run(fake.lpush(keys.runs_key(PREFIX), "not json"))
        body = api.get("/v1/runs").json()
        Runs.model_validate(body)
        assert [r["status"] for r in body["runs"]] == ["gate-refused", "published"]


class TestPopular:
    def test_items_with_attributes(self, api: TestClient) -> None:
        body = api.get("/v1/popular").json()
        Popular.model_validate(body)
        assert body["items"] == [91, 92, 93]
        assert body["details"][0] == {"item_id": 91, "department": "PRODUCE", "brand": "National"}
        assert body["details"][1] == {"item_id": 92}


class TestPage:
    def test_served_at_ui_with_its_assets(self, api: TestClient) -> None:
        page = api.get("/ui/")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        assert '<label for="user-id">' in page.text
        for asset in ("console.js", "console.css"):
            assert api.get(f"/ui/{asset}").status_code == 200

    def test_no_cdn_everything_local(self) -> None:
        for path in STATIC_DIR.iterdir():
            text = path.read_text()
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
            assert "https://" not in text

    def test_endpoints_in_openapi(self, api: TestClient) -> None:
        paths = api.get("/openapi.json").json()["paths"]
        assert {"/v1/versions/live", "/v1/runs", "/v1/popular"} <= set(paths)
