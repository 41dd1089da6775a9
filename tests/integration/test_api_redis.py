"""The lookup API against a real Redis (issue #6): every route, outage and recovery, flips."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import redis
import uvicorn

from api.main import create_app
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.data import columns as C
from recsys_batch.publish.status import version_info
from tests.conftest import free_port, start_redis_server
from tests.integration.test_cluster import cluster_url  # noqa: F401 - a fixture, reused
from tests.publishing import publish_lists, publish_users
from tests.under_load import Answers, readers_running

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

USERS = {1: [11, 12, 13, 14, 15], 2: [21, 22, 23, 24, 25], 30: [31, 32, 33, 34, 35]}
POPULAR = [91, 92, 93, 94, 95]


def seed(
    client: redis.Redis,
    prefix: str,
    users: dict[int, list[int]],
    popular: list[int],
    items: dict[int, dict[str, Any]] | None = None,
) -> str:
    """Publish ``users`` as the new live version, through the batch's writer; its id."""
    return publish_users(client, users, popular, RedisConfig(key_prefix=prefix), items=items)


def settings_for(url: str, prefix: str, **api: Any) -> Settings:
    return Settings(
        redis={"url": url, "key_prefix": prefix},
        api={"current_cache_seconds": 0.05, "redis_timeout_seconds": 0.5, **api},
    )


class ServerThread:
    """uvicorn (uvloop, httptools) serving an app in a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                msg = "uvicorn did not start"
                raise RuntimeError(msg)
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class TestRoutes:
    @pytest.fixture
    def version(self, key_prefix: str, real_redis: redis.Redis) -> str:
        items = {11: {"department": "PRODUCE", "brand": "National", "size": "1 LB"}}
        return seed(real_redis, key_prefix, USERS, POPULAR, items)

    @pytest.fixture
    def client(self, redis_url: str, key_prefix: str, version: str) -> Iterator[TestClient]:
        app = create_app(settings_for(redis_url, key_prefix, max_batch=5))
        with TestClient(app) as client:
            yield client

    def test_get_personal_and_fallback(
        self, client: TestClient, version: str, key_prefix: str, real_redis: redis.Redis
    ) -> None:
        known = client.get("/v1/recommendations/30?k=3")
        unknown = client.get("/v1/recommendations/4")
        meta = version_info(real_redis, version, RedisConfig(key_prefix=key_prefix)).meta
        assert known.json() == {
            "user_id": 30,
            "items": [31, 32, 33],
            "source": "personal",
            "fallback_items": 0,
            "variant": "control",
            "version": version,
            "generated_at": meta["created_at"],
        }
        assert (unknown.json()["items"], unknown.json()["source"]) == (POPULAR, "fallback")

    def test_details(self, client: TestClient) -> None:
        body = client.get("/v1/recommendations/1?k=2&details=true").json()
        assert body["details"] == [
            {"item_id": 11, "department": "PRODUCE", "brand": "National", "size": "1 LB"},
            {"item_id": 12},
        ]

    def test_batch_and_limit(self, client: TestClient) -> None:
        ok = client.post("/v1/recommendations?k=1", json={"user_ids": [2, 3, 30]})
        assert [(r["items"], r["source"]) for r in ok.json()["results"]] == [
            ([21], "personal"),
            ([91], "fallback"),
            ([31], "personal"),
        ]
        too_many = client.post("/v1/recommendations", json={"user_ids": list(range(6))})
        assert too_many.status_code == 422
        assert "at most 5 user ids" in too_many.text

    def test_operations(self, client: TestClient, version: str) -> None:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["version"] == version
        assert "recsys_api_lookups_total" in client.get("/metrics").text
        assert client.get("/docs").status_code == 200

    def test_malformed_id(self, client: TestClient) -> None:
        assert client.get("/v1/recommendations/1%3A*").status_code == 422


def test_reads_what_the_batch_wrote(
    redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    """End to end with the batch's own writer and version lifecycle, from a recommendations
    frame whose ranks arrive out of order (tests/publishing.py)."""
    recs = pl.DataFrame(
        {
            C.USER: [7, 7, 7, 8],
            C.ITEM: [703, 701, 702, 801],
            C.RANK: [3, 1, 2, 1],
            C.SCORE: [0.1, 0.9, 0.5, 0.7],
        },
        schema=C.RECOMMENDATIONS,
    )
    attrs = pl.DataFrame({C.ITEM: [701], "department": ["DELI"]})
    cfg = RedisConfig(url=redis_url, key_prefix=key_prefix)
    version = publish_lists(real_redis, recs, [5, 6], attrs, cfg, {"run_id": "t"})
    with TestClient(create_app(settings_for(redis_url, key_prefix))) as client:
        seven = client.get("/v1/recommendations/7?details=true").json()
        other = client.get("/v1/recommendations/9").json()
    assert (seven["items"], seven["version"]) == ([701, 702, 703, 5, 6], version)
    assert seven["fallback_items"] == 2  # a short list is refilled from the popular one
    assert seven["details"][0] == {"item_id": 701, "department": "DELI"}
    assert (other["items"], other["source"]) == ([5, 6], "fallback")


def test_redis_goes_away_and_comes_back(tmp_path: Path, key_prefix: str) -> None:
    proc, port = start_redis_server(tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        seed(redis.Redis.from_url(url), key_prefix, USERS, POPULAR)
        with TestClient(create_app(settings_for(url, key_prefix))) as client:
            assert client.get("/v1/recommendations/1").status_code == 200
            proc.terminate()
            proc.wait(timeout=10)
            for _ in range(3):
                for resp in (
                    client.get("/v1/recommendations/1"),
                    client.post("/v1/recommendations", json={"user_ids": [1, 2]}),
                    client.get("/readyz"),
                ):
                    assert resp.status_code == 503
                    assert resp.json()["error"] == "redis_unavailable"
            assert client.get("/healthz").status_code == 200
            time.sleep(0.1)  # let the cached pointer expire too

            proc, _ = start_redis_server(tmp_path, port=port)  # same port; data was not saved
            readyz = client.get("/readyz")
            assert readyz.status_code == 503
            assert readyz.json()["error"] == "no_live_version"
            v2 = seed(redis.Redis.from_url(url), key_prefix, USERS, POPULAR)
            time.sleep(0.1)
            body = client.get("/v1/recommendations/1").json()
            assert (body["version"], body["items"]) == (v2, USERS[1])
            assert client.get("/readyz").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _version_items(n: int, user: int) -> list[int]:
    """Items that encode their version: n * 100000 + ..., so a mix is detectable."""
    return [n * 100_000 + user * 10 + j for j in range(5)]


def test_version_flip_while_requests_run(
    redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    """Every answer's items come from the version it names, while versions are published
    (and, by the real cleanup, the one before the previous unlinked) under load."""
    users = range(1, 51)
    published: dict[str, int] = {}  # version id -> the n its items encode

    def publish(n: int) -> str:
        recs = {u: _version_items(n, u) for u in users}
        popular = [n * 100_000 + 99_990 + j for j in range(5)]
        version = seed(real_redis, key_prefix, recs, popular)
        published[version] = n
        return version

    publish(1)
    app = create_app(settings_for(redis_url, key_prefix, current_cache_seconds=0.01))
    answers = Answers(readers=4)  # rows: (version, items)

    def ask(http: httpx.Client, rng: random.Random) -> tuple[str, list[tuple[Any, ...]]] | None:
        if rng.random() < 0.8:
            resp = http.get(f"/v1/recommendations/{rng.randint(1, 60)}")
            if resp.status_code != 200:
                answers.fail(f"GET {resp.status_code} {resp.text}")
                return None
            body = resp.json()
            return body["version"], [(body["version"], body["items"])]
        ids = [rng.randint(1, 60) for _ in range(20)]
        resp = http.post("/v1/recommendations", json={"user_ids": ids})
        if resp.status_code != 200:
            answers.fail(f"POST {resp.status_code} {resp.text}")
            return None
        body = resp.json()
        return body["version"], [(body["version"], r["items"]) for r in body["results"]]

    # Each flip waits (bounded) until every reader was answered from the new version, so
    # every version is served under load however slow the machine; then each answer is
    # checked: non-empty, and every item encodes the version that answered.
    with ServerThread(app) as base:
        with readers_running(base, answers, ask):
            answers.wait_until_every_reader_answered()
            for n in range(2, 12):
                answers.wait_until_every_reader_saw(publish(n))
    assert answers.failures == []
    mixed = [
        (version, items)
        for version, items in answers.rows
        if not items or any(item // 100_000 != published.get(version) for item in items)
    ]
    assert mixed == []
    assert answers.versions() == set(published)


def test_against_a_redis_cluster(cluster_url: str) -> None:  # noqa: F811
    """Batches use the slot-aware MGET split; keys of 200 users spread over 3 masters."""
    from redis.cluster import RedisCluster  # noqa: PLC0415

    prefix = f"api{random.randrange(16**6):06x}"
    client = RedisCluster.from_url(cluster_url.replace("redis+cluster", "redis"))
    users = {u: [u * 10 + j for j in range(5)] for u in range(1, 201)}
    publish_users(client, users, [7, 8, 9], RedisConfig(key_prefix=prefix, user_buckets=8))
    app = create_app(settings_for(cluster_url, prefix))
    with TestClient(app) as http:
        assert app.state.lookup.cluster
        one = http.get("/v1/recommendations/17?k=2").json()
        batch = http.post("/v1/recommendations?k=1", json={"user_ids": [*users, 999]}).json()
        ready = http.get("/readyz")
    client.close()
    assert (one["items"], one["source"]) == ([170, 171], "personal")
    assert [r["items"] for r in batch["results"]] == [[u * 10] for u in users] + [[7]]
    assert ready.status_code == 200


def test_embedded_redis_when_no_url_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_prefix: str
) -> None:
    """No REDIS_URL: the API reads the embedded Redis the batch wrote to."""
    embedded = pytest.importorskip("recsys_batch.publish.embedded")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("RECSYS_REDIS__URL", raising=False)
    settings = Settings(
        redis={"embedded_dir": tmp_path / "redis", "key_prefix": key_prefix},
        api={"current_cache_seconds": 0.05},
    )
    assert settings.redis.url is None
    url = embedded.embedded_url(settings.redis)  # what the batch does before publishing
    try:
        e1 = seed(redis.Redis.from_url(url), key_prefix, USERS, POPULAR)
        with TestClient(create_app(settings)) as client:
            body = client.get("/v1/recommendations/2").json()
        assert (body["version"], body["items"]) == (e1, USERS[2])
    finally:
        embedded.stop_embedded(tmp_path / "redis")


def test_recsys_serve_answers(redis_url: str, key_prefix: str, real_redis: redis.Redis) -> None:
    seed(real_redis, key_prefix, USERS, POPULAR)
    port = free_port()
    env = {**os.environ, "RECSYS_REDIS__URL": redis_url, "RECSYS_REDIS__KEY_PREFIX": key_prefix}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/v1/recommendations/1?k=2", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert resp.json()["items"] == [11, 12]
        assert "server" not in resp.headers  # --no-server-header
    finally:
        proc.terminate()
        proc.wait(timeout=10)
