"""The API under load while the batch's own publisher flips versions (issue #7).

Unlike ``test_api_redis.test_version_flip_while_requests_run`` (which writes versions by hand),
the versions here are published by the batch's own writer and version lifecycle
(:func:`tests.publishing.publish_lists`), so the real cleanup (UNLINK of every version but the
live and the previous one) runs while requests are in flight. Every item of version ``m``
encodes ``m`` (``m * 100000 + user * 10 + j``), so an answer mixing two versions, or naming one
version and carrying another's items, is visible. The longer benchmark is
``benchmarks/api_flip_load.py``.
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
import redis
import uvicorn

from api.main import create_app
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.publish import status, versions
from tests.conftest import free_port
from tests.publishing import publish_lists
from tests.under_load import Answers, readers_running

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

USERS = 2_000
UNKNOWN = 10_000_000  # never published: always the fallback list


def marked_recs(marker: int, users: int = USERS) -> pl.DataFrame:
    ids = np.arange(1, users + 1, dtype=np.int64)
    items = marker * 100_000 + np.repeat(ids, 5) * 10 + np.tile(np.arange(5), users)
    return pl.DataFrame(
        {
            "user_id": np.repeat(ids, 5),
            "item_id": items.astype(np.int64),
            "rank": np.tile(np.arange(1, 6, dtype=np.int32), users),
            "score": np.ones(users * 5, dtype=np.float32),
        }
    )


def marked_popular(marker: int) -> list[int]:
    return [marker * 100_000 + 99_990 + j for j in range(5)]


def expected(marker: int, user: int) -> list[int]:
    if user == UNKNOWN:
        return marked_popular(marker)
    return [marker * 100_000 + user * 10 + j for j in range(5)]


class Server:
    """uvicorn (uvloop, httptools) in a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                loop="uvloop",
                http="httptools",
                log_level="warning",
                access_log=False,
            )
        )
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


@pytest.fixture
def cfg(redis_url: str, key_prefix: str) -> Iterator[RedisConfig]:
    config = RedisConfig(url=redis_url, key_prefix=key_prefix, chunk_size=1_000)
    yield config
    client = redis.Redis.from_url(redis_url)
    for version in status.all_versions(client, config):
        versions.unlink_version(client, version, config)
    client.close()


def test_zero_5xx_and_one_version_per_answer_while_publishing(
    real_redis: redis.Redis, cfg: RedisConfig
) -> None:
    """Eight flips, each made while four readers request without pause; the next flip waits
    (bounded) until every reader has been answered from the new version, so each version is
    served under load whatever the machine's speed. Every answer is then checked: one
    version's items for that version, ``fallback`` exactly for the unknown user."""
    markers: dict[str, int] = {}
    markers[publish_lists(real_redis, marked_recs(1), marked_popular(1), None, cfg)] = 1
    settings = Settings(
        redis={"url": cfg.url, "key_prefix": cfg.key_prefix},
        api={"current_cache_seconds": 0.1, "redis_timeout_seconds": 1.0},
    )
    answers = Answers(readers=4)  # rows: (version, user, items, source)

    def ask(http: httpx.Client, rng: random.Random) -> tuple[str, list[tuple[Any, ...]]] | None:
        if rng.random() < 0.7:
            user = rng.choice([rng.randint(1, USERS), UNKNOWN])
            resp = http.get(f"/v1/recommendations/{user}")
            if resp.status_code != 200:
                answers.fail(f"GET {resp.status_code} {resp.text[:200]}")
                return None
            body = resp.json()
            return body["version"], [(body["version"], user, body["items"], body["source"])]
        users = [rng.randint(1, USERS) for _ in range(20)] + [UNKNOWN]
        resp = http.post("/v1/recommendations", json={"user_ids": users})
        if resp.status_code != 200:
            answers.fail(f"POST {resp.status_code} {resp.text[:200]}")
            return None
        body = resp.json()
        rows = [(body["version"], r["user_id"], r["items"], r["source"]) for r in body["results"]]
        return body["version"], rows

    with Server(create_app(settings)) as base:
        with readers_running(base, answers, ask):
            answers.wait_until_every_reader_answered()
            for marker in range(2, 10):
                version = publish_lists(
                    real_redis, marked_recs(marker), marked_popular(marker), None, cfg
                )
                markers[version] = marker
                answers.wait_until_every_reader_saw(version)

    assert answers.failures == []
    wrong = [
        (version, user, items, source)
        for version, user, items, source in answers.rows
        if version not in markers
        or items != expected(markers[version], user)
        or (source == "fallback") != (user == UNKNOWN)
    ]
    assert wrong == []
    assert answers.versions() == set(markers)  # all nine were served, none other


def test_known_user_never_gets_fallback_after_fast_republish(
    real_redis: redis.Redis, cfg: RedisConfig
) -> None:
    """Publish, read (the pointer is cached), publish twice more (the cleanup unlinks the
    cached version), read again within the cache period: the user must stay ``personal``."""
    publish_lists(real_redis, marked_recs(1, 10), marked_popular(1), None, cfg)
    settings = Settings(
        redis={"url": cfg.url, "key_prefix": cfg.key_prefix},
        api={"current_cache_seconds": 30.0},
    )
    with TestClient(create_app(settings)) as api:
        assert api.get("/v1/recommendations/3").json()["source"] == "personal"
        for marker in (2, 3):
            publish_lists(real_redis, marked_recs(marker, 10), marked_popular(marker), None, cfg)
        body = api.get("/v1/recommendations/3").json()
    assert body["source"] == "personal"
