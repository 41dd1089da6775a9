"""versions.py on fakeredis: layout, TTL, verification, flip, cleanup, rollback (issue #5)."""

from __future__ import annotations

import json

import fakeredis
import polars as pl
import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys, versions

CFG = RedisConfig(url="redis://unused", key_prefix="recsys", chunk_size=2, retry_backoff_seconds=0)


def recs_frame(users: dict[int, list[int]]) -> pl.DataFrame:
    rows = [
        (user, item, rank, 1.0 / rank)
        for user, items in users.items()
        for rank, item in enumerate(items, start=1)
    ]
    return pl.DataFrame(
        rows,
        schema={"user_id": pl.Int64, "item_id": pl.Int64, "rank": pl.Int32, "score": pl.Float32},
        orient="row",
    )


RECS = recs_frame({10: [101, 102, 103, 104, 105], 20: [106, 101], 30: [103]})
ITEMS = pl.DataFrame({"item_id": [101, 106], "department": ["DELI", "PRODUCE"]})


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


class TestPureHelpers:
    def test_user_values_orders_by_rank(self) -> None:
        shuffled = RECS.sample(fraction=1.0, shuffle=True, seed=3)
        values = dict(versions.user_values(shuffled).iter_rows())
        assert values == {10: "101,102,103,104,105", 20: "106,101", 30: "103"}

    def test_user_values_refuses_repeated_rank(self) -> None:
        bad = recs_frame({1: [5]}).vstack(recs_frame({1: [6]}))
        with pytest.raises(ValueError, match="repeat"):
            versions.user_values(bad)

    def test_user_values_refuses_negative_user(self) -> None:
        with pytest.raises(ValueError, match="negative"):
            versions.user_values(recs_frame({-1: [5]}))

    def test_resp_keys_match_keys_module(self) -> None:
        values = versions.user_values(RECS)
        prefix = keys.version_prefix("v1", "recsys") + "u:"
        commands = versions.resp_set_commands(values, prefix, 60).to_list()
        for user, command in zip(values["user_id"], commands, strict=True):
            key = keys.user_key("v1", user)
            assert f"\r\n${len(key)}\r\n{key}\r\n" in command
            assert command.startswith("*5\r\n$3\r\nSET\r\n")
            assert command.endswith("\r\n$2\r\nEX\r\n$2\r\n60\r\n")

    def test_exists_command_is_resp(self) -> None:
        payload = versions.resp_exists_command(pl.Series(["a", "bc"]))
        assert payload == b"*3\r\n$6\r\nEXISTS\r\n$1\r\na\r\n$2\r\nbc\r\n"

    def test_version_ids_are_valid_and_distinct(self) -> None:
        ids = {versions.new_version_id() for _ in range(20)}
        assert len(ids) > 1
        assert all(keys.check_version(v) == v for v in ids)


class TestPublish:
    def test_golden_layout(self, client: fakeredis.FakeRedis) -> None:
        version = versions.publish_version(
            client,
            RECS,
            [106, 105],
            ITEMS,
            {"run_id": "r1", "metrics": {"precision@5": 0.2}},
            CFG,
            version="v1",
        )
        assert version == "v1"
        assert client.get("recsys:current") == b"v1"
        assert client.get("recsys:v:v1:u:10") == b"101,102,103,104,105"
        assert client.get("recsys:v:v1:u:20") == b"106,101"
        assert client.get("recsys:v:v1:popular") == b"106,105"
        assert json.loads(client.hget("recsys:v:v1:items", "101")) == {"department": "DELI"}
        meta = client.hgetall("recsys:v:v1:meta")
        assert meta[b"state"] == b"complete"
        assert meta[b"format"] == str(keys.FORMAT).encode()
        assert meta[b"users"] == b"3"
        assert meta[b"run_id"] == b"r1"
        assert json.loads(meta[b"metrics"]) == {"precision@5": 0.2}
        assert client.zrange("recsys:versions", 0, -1) == [b"v1"]
        assert client.get("recsys:previous") is None
        # Pointers never expire; every key of the version does.
        names = {k.decode() for k in client.scan_iter("recsys:v:v1:*")}
        assert names == {
            "recsys:v:v1:u:10",
            "recsys:v:v1:u:20",
            "recsys:v:v1:u:30",
            "recsys:v:v1:popular",
            "recsys:v:v1:items",
            "recsys:v:v1:meta",
        }
        for name in names:
            assert 0 < client.ttl(name) <= CFG.ttl_days * 86_400
        assert client.ttl("recsys:current") == -1

    def test_second_publish_keeps_previous_and_third_removes_oldest(
        self, client: fakeredis.FakeRedis
    ) -> None:
        for version in ("v1", "v2", "v3"):
            versions.publish_version(client, RECS, [1], None, {}, CFG, version=version)
        assert client.get("recsys:current") == b"v3"
        assert client.get("recsys:previous") == b"v2"
        assert client.exists("recsys:v:v2:u:10") == 1
        assert list(client.scan_iter("recsys:v:v1:*")) == []
        assert client.zrange("recsys:versions", 0, -1) == [b"v2", b"v3"]

    def test_half_written_version_is_cleaned_by_next_publish(
        self, client: fakeredis.FakeRedis
    ) -> None:
        versions.publish_version(client, RECS, [1], None, {}, CFG, version="v1")
        # A crashed run: registered, meta "writing", some users, never flipped.
        client.zadd("recsys:versions", {"crashed": 1.0})
        client.hset("recsys:v:crashed:meta", mapping={"state": "writing"})
        client.set("recsys:v:crashed:u:10", "1,2")
        versions.publish_version(client, RECS, [1], None, {}, CFG, version="v2")
        assert list(client.scan_iter("recsys:v:crashed:*")) == []
        assert client.get("recsys:current") == b"v2"
        assert client.get("recsys:previous") == b"v1"

    def test_empty_recommendations_refused_before_writing(
        self, client: fakeredis.FakeRedis
    ) -> None:
        with pytest.raises(ValueError, match="empty"):
            versions.publish_version(client, RECS.head(0), [1], None, {}, CFG)
        assert client.dbsize() == 0

    def test_failed_verification_leaves_live_version(
        self, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        versions.publish_version(client, RECS, [1], None, {}, CFG, version="v1")
        monkeypatch.setattr(versions, "count_existing", lambda *a, **k: 1)
        with pytest.raises(PublishError, match="verification failed"):
            versions.publish_version(client, RECS, [1], None, {}, CFG, version="v2")
        assert client.get("recsys:current") == b"v1"
        assert client.hget("recsys:v:v2:meta", "state") == b"writing"

    def test_connection_errors_retried_then_publish_error(
        self, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        versions.publish_version(client, RECS, [1], None, {}, CFG, version="v1")
        calls = {"n": 0}

        def broken(*args: object, **kwargs: object) -> None:
            calls["n"] += 1
            raise redis.ConnectionError("boom")

        monkeypatch.setattr(fakeredis.FakeRedis, "pipeline", broken)
        with pytest.raises(PublishError, match="after 4 attempts"):
            versions.publish_version(client, RECS, [1], None, {}, CFG, version="v2")
        assert calls["n"] == CFG.retries + 1
        monkeypatch.undo()
        assert client.get("recsys:current") == b"v1"

    def test_transient_error_is_retried(self, monkeypatch: pytest.MonkeyPatch) -> None:
        attempts = iter([redis.TimeoutError("slow"), None])

        def flaky() -> str:
            error = next(attempts)
            if error:
                raise error
            return "ok"

        assert versions.with_retries(flaky, CFG, "test") == "ok"


class TestRollbackAndStatus:
    def test_rollback_swaps_and_refreshes_ttl(self, client: fakeredis.FakeRedis) -> None:
        versions.publish_version(client, RECS, [1], None, {}, CFG, version="v1")
        versions.publish_version(client, RECS, [2], None, {}, CFG, version="v2")
        client.expire("recsys:v:v1:u:10", 5)
        restored, demoted = versions.rollback(client, CFG)
        assert (restored, demoted) == ("v1", "v2")
        assert client.get("recsys:current") == b"v1"
        assert client.get("recsys:previous") == b"v2"
        assert client.ttl("recsys:v:v1:u:10") > 5
        # Rolling back again undoes the rollback.
        assert versions.rollback(client, CFG) == ("v2", "v1")

    def test_rollback_without_previous_fails(self, client: fakeredis.FakeRedis) -> None:
        versions.publish_version(client, RECS, [1], None, {}, CFG, version="v1")
        with pytest.raises(PublishError, match="nothing to roll back"):
            versions.rollback(client, CFG)

    def test_rollback_to_expired_version_fails(self, client: fakeredis.FakeRedis) -> None:
        versions.publish_version(client, RECS, [1], None, {}, CFG, version="v1")
        versions.publish_version(client, RECS, [1], None, {}, CFG, version="v2")
        for name in list(client.scan_iter("recsys:v:v1:*")):
            client.delete(name)
        with pytest.raises(PublishError, match="expired"):
            versions.rollback(client, CFG)
        assert client.get("recsys:current") == b"v2"

    def test_status(self, client: fakeredis.FakeRedis) -> None:
        assert versions.publish_status(client, CFG) == {"live": None, "previous": None}
        meta = {"metrics": {"precision@5": 0.25}}
        versions.publish_version(client, RECS, [1], None, meta, CFG, version="v1")
        versions.publish_version(client, RECS, [1], None, meta, CFG, version="v2")
        status = versions.publish_status(client, CFG)
        assert status["live"]["version"] == "v2"
        assert status["live"]["users"] == 3
        assert status["live"]["metrics"] == {"precision@5": 0.25}
        assert status["previous"]["version"] == "v1"
