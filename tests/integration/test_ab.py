"""A/B experiments against a real Redis (issue #18): ``recsys ab``, arms, variants, cleanup.

Versions are published by the batch's own writer and lifecycle
(:func:`tests.publishing.publish_lists`); each marks its items with its own number, so an
answer shows which version it came from.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
import redis
from typer.testing import CliRunner

from api.main import create_app
from cli.main import app as cli
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.data import columns as C
from recsys_batch.publish import keys, status
from tests.integration.test_api_serving import RoundTrips
from tests.publishing import publish_lists

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

USERS = list(range(1, 201))
MARK = 1_000_000


def recs(marker: int) -> pl.DataFrame:
    rows = [(u, marker * MARK + u * 10 + j, j + 1, 1.0) for u in USERS for j in range(5)]
    return pl.DataFrame(rows, schema=C.RECOMMENDATIONS, orient="row")


def marker_of(items: list[int]) -> int:
    return items[0] // MARK


@pytest.fixture
def cfg(redis_url: str, key_prefix: str) -> RedisConfig:
    return RedisConfig(url=redis_url, key_prefix=key_prefix)


@pytest.fixture
def published(real_redis: redis.Redis, cfg: RedisConfig) -> dict[int, str]:
    """Version 1 then version 2 (live)."""
    return {n: publish_lists(real_redis, recs(n), [n * MARK + 9], None, cfg) for n in (1, 2)}


def ab(args: list[str], redis_url: str, key_prefix: str) -> Any:
    env = {"REDIS_URL": redis_url, "RECSYS_REDIS__KEY_PREFIX": key_prefix}
    return CliRunner().invoke(cli, ["ab", *args], env=env)


@pytest.fixture
def api(redis_url: str, key_prefix: str, published: dict[int, str]) -> Iterator[TestClient]:
    settings = Settings(
        redis={"url": redis_url, "key_prefix": key_prefix}, api={"current_cache_seconds": 0.0}
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_start_serves_a_stable_share_then_stop(
    api: TestClient, published: dict[int, str], redis_url: str, key_prefix: str
) -> None:
    before = api.get("/v1/recommendations/1").json()
    assert (before["variant"], before["version"]) == ("control", published[2])

    started = ab(["start", published[1], "--share", "0.3"], redis_url, key_prefix)
    assert started.exit_code == 0, started.output
    treated = {u for u in USERS if keys.in_treatment(u, 0.3)}
    assert 30 < len(treated) < 90
    for _ in range(2):  # the same user, the same arm, every request
        for user in USERS:
            body = api.get(f"/v1/recommendations/{user}").json()
            arm = 1 if user in treated else 2
            assert body["version"] == published[arm]
            assert marker_of(body["items"]) == arm
            assert body["variant"] == ("treatment" if arm == 1 else "control")
    unknown = api.get("/v1/recommendations/999999").json()
    assert unknown["source"] == "fallback"
    assert marker_of(unknown["items"]) == (1 if keys.in_treatment(999999, 0.3) else 2)

    batch = api.post("/v1/recommendations?details=true", json={"user_ids": USERS}).json()
    assert batch["version"] == published[2]
    for user, result in zip(USERS, batch["results"], strict=True):
        arm = 1 if user in treated else 2
        assert marker_of(result["items"]) == arm
        assert result.get("version", published[2]) == published[arm]
    metrics = api.get("/metrics").text
    assert 'recsys_api_variant_lookups_total{variant="treatment"}' in metrics

    shown = ab(["status"], redis_url, key_prefix)
    assert json.loads(shown.stdout)["experiment"]["version"] == published[1]
    stopped = ab(["stop"], redis_url, key_prefix)
    assert stopped.exit_code == 0, stopped.output
    after = [api.get(f"/v1/recommendations/{u}").json() for u in sorted(treated)[:5]]
    assert {(b["variant"], b["version"]) for b in after} == {("control", published[2])}


def test_lookup_with_an_experiment_is_one_round_trip(
    api: TestClient,
    published: dict[int, str],
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ab(["start", published[1], "--share", "0.5"], redis_url, key_prefix).exit_code == 0
    api.get("/v1/recommendations/1")  # the experiment is noticed and its version loaded
    trips = RoundTrips(monkeypatch)
    for user in (1, 2, 3, 4, 999999):
        n, resp = trips.of(lambda user=user: api.get(f"/v1/recommendations/{user}?explain=true"))
        assert (n, resp.status_code) == (1, 200)
    n, resp = trips.of(lambda: api.post("/v1/recommendations", json={"user_ids": USERS}))
    assert (n, resp.status_code) == (1, 200)


def test_cleanup_never_removes_the_experiments_version(
    real_redis: redis.Redis, cfg: RedisConfig, published: dict[int, str], redis_url: str
) -> None:
    assert ab(["start", published[1], "--share", "0.1"], redis_url, cfg.key_prefix).exit_code == 0
    newer = [publish_lists(real_redis, recs(n), [n], None, cfg) for n in (3, 4)]
    kept = status.all_versions(real_redis, cfg)
    assert published[1] in kept and published[2] not in kept  # 2 was neither kept nor tested
    assert set(kept) == {published[1], *newer}
    assert status.version_info(real_redis, published[1], cfg).state == keys.STATE_COMPLETE
    assert len(status.version_user_ids(real_redis, published[1], cfg)) == len(USERS)
    assert ab(["stop"], redis_url, cfg.key_prefix).exit_code == 0
    publish_lists(real_redis, recs(5), [5], None, cfg)
    assert published[1] not in status.all_versions(real_redis, cfg)


def test_start_refuses_live_or_missing_versions(
    published: dict[int, str], redis_url: str, key_prefix: str
) -> None:
    live = ab(["start", published[2]], redis_url, key_prefix)
    assert live.exit_code == 4 and "live version already" in " ".join(live.output.split())
    missing = ab(["start", "20990101T000000Z-dead"], redis_url, key_prefix)
    assert missing.exit_code == 4 and "not a complete version" in " ".join(missing.output.split())
    bad = ab(["start", published[1], "--share", "0"], redis_url, key_prefix)
    assert bad.exit_code == 2


def test_ab_start_under_load_gives_no_5xx_and_one_version_per_answer(
    api: TestClient, published: dict[int, str], redis_url: str, key_prefix: str
) -> None:
    problems: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        n = 0
        while not stop.is_set():
            user = USERS[n % len(USERS)]
            n += 1
            resp = api.post("/v1/recommendations", json={"user_ids": [user, user + 1]})
            if resp.status_code != 200:
                problems.append(f"{resp.status_code} {resp.text[:100]}")
                continue
            body = resp.json()
            for result in body["results"]:
                version = result.get("version", body["version"])
                arms = [k for k, v in published.items() if v == version]
                if len(arms) != 1 or marker_of(result["items"]) != arms[0]:
                    problems.append(f"user {result['user_id']}: {result} in {body}")

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            assert (
                ab(["start", published[1], "--share", "0.5"], redis_url, key_prefix).exit_code == 0
            )
            assert ab(["stop"], redis_url, key_prefix).exit_code == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert problems == []
