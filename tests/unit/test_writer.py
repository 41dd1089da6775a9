"""writer.py: stored values, the RESP encoding, and writing a shard's users (issue #5, #15).

The raw RESP path needs a real server (``tests/integration/test_publish_redis.py``); fakeredis
takes the portable path of redis-py pipelines, which a Redis Cluster takes too.
"""

from __future__ import annotations

import fakeredis
import polars as pl
import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys, store, writer

CFG = RedisConfig(url="redis://unused", key_prefix="recsys", chunk_size=2, retry_backoff_seconds=0)
VERSION = "v1"


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
VALUES = {10: "101,102,103,104,105", 20: "106,101", 30: "103"}


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


class TestUserValues:
    def test_items_best_first_whatever_the_row_order(self) -> None:
        shuffled = RECS.sample(fraction=1.0, shuffle=True, seed=3)
        assert dict(writer.user_values(shuffled).iter_rows()) == VALUES

    def test_schema(self) -> None:
        assert writer.user_values(RECS).schema == pl.Schema(
            {"user_id": pl.Int64, "value": pl.String}
        )
        assert writer.user_values(RECS.head(0)).schema == writer.user_values(RECS).schema

    def test_repeated_rank_refused(self) -> None:
        bad = recs_frame({1: [5]}).vstack(recs_frame({1: [6]}))
        with pytest.raises(ValueError, match="repeat a"):
            writer.user_values(bad)

    def test_negative_user_refused(self) -> None:
        with pytest.raises(ValueError, match="negative"):
            writer.user_values(recs_frame({-1: [5]}))


class TestResp:
    def test_set_commands_golden(self) -> None:
        values = pl.DataFrame({"user_id": [7, 123], "value": ["1,2", "840361"]})
        prefix = keys.version_prefix(VERSION, "recsys") + "u:"
        commands = writer.resp_set_commands(values, prefix, 1_209_600).to_list()
        assert commands == [
            "*5\r\n$3\r\nSET\r\n$15\r\nrecsys:v:v1:u:7\r\n$3\r\n1,2\r\n"
            "$2\r\nEX\r\n$7\r\n1209600\r\n",
            "*5\r\n$3\r\nSET\r\n$17\r\nrecsys:v:v1:u:123\r\n$6\r\n840361\r\n"
            "$2\r\nEX\r\n$7\r\n1209600\r\n",
        ]

    def test_set_command_keys_are_the_keys_module_keys(self) -> None:
        values = writer.user_values(RECS)
        prefix = keys.version_prefix(VERSION, "recsys") + "u:"
        commands = writer.resp_set_commands(values, prefix, 60).to_list()
        for user, command in zip(values["user_id"], commands, strict=True):
            key = keys.user_key(VERSION, user)
            assert f"\r\n${len(key)}\r\n{key}\r\n" in command

    def test_exists_command_golden(self) -> None:
        payload = writer.resp_exists_command(pl.Series(["a", "bc"]))
        assert payload == b"*3\r\n$6\r\nEXISTS\r\n$1\r\na\r\n$2\r\nbc\r\n"

    def test_user_keys(self) -> None:
        names = writer.user_keys("p:v:x:u:", pl.Series([0, 42]))
        assert names.to_list() == ["p:v:x:u:0", "p:v:x:u:42"]


class TestFastPathChoice:
    def test_fakeredis_takes_the_portable_path(self, client: fakeredis.FakeRedis) -> None:
        assert not writer.fast_path_ok(client)

    def test_a_tcp_client_takes_the_raw_path(self) -> None:
        tcp = redis.Redis(host="127.0.0.1", port=1)  # never connects: only its class is read
        assert writer.fast_path_ok(tcp)


class TestWriteUsers:
    def test_portable_path_writes_every_user_with_the_ttl(
        self, client: fakeredis.FakeRedis
    ) -> None:
        assert writer.write_users(client, VERSION, RECS, CFG) == 3  # chunks of 2 users
        stored = {
            int(name.rsplit(b":", 1)[1]): client.get(name).decode()
            for name in client.scan_iter("recsys:v:v1:u:*")
        }
        assert stored == VALUES
        ttl = writer.ttl_seconds(CFG)
        assert ttl == CFG.ttl_days * 86_400
        for user in VALUES:
            assert ttl - 5 < client.ttl(keys.user_key(VERSION, user)) <= ttl
        assert client.dbsize() == 3  # user keys only: no pointer, no meta

    def test_key_prefix_is_honoured(self, client: fakeredis.FakeRedis) -> None:
        cfg = CFG.model_copy(update={"key_prefix": "other"})
        writer.write_users(client, VERSION, RECS, cfg)
        assert client.get("other:v:v1:u:20") == b"106,101"
        assert list(client.scan_iter("recsys:*")) == []

    def test_no_rows_write_nothing(self, client: fakeredis.FakeRedis) -> None:
        assert writer.write_users(client, VERSION, RECS.head(0), CFG) == 0
        assert client.dbsize() == 0

    def test_negative_ids_write_nothing(self, client: fakeredis.FakeRedis) -> None:
        bad = RECS.vstack(recs_frame({-5: [101]}))
        with pytest.raises(ValueError, match="negative"):
            writer.write_users(client, VERSION, bad, CFG)
        assert client.dbsize() == 0

    def test_repeated_ranks_write_nothing(self, client: fakeredis.FakeRedis) -> None:
        bad = RECS.vstack(recs_frame({10: [999]}))  # user 10 has a second rank 1
        with pytest.raises(ValueError, match="repeat a"):
            writer.write_users(client, VERSION, bad, CFG)
        assert client.dbsize() == 0

    def test_returns_the_keys_that_exist_not_the_ones_sent(
        self, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        original = writer.write_users_pipeline

        def loses_a_user(
            client: fakeredis.FakeRedis, values: pl.DataFrame, prefix: str, cfg: RedisConfig
        ) -> None:
            original(client, values.head(2), prefix, cfg)

        monkeypatch.setattr(writer, "write_users_pipeline", loses_a_user)
        assert writer.write_users(client, VERSION, RECS, CFG) == 2

    def test_rewriting_a_shard_is_harmless(self, client: fakeredis.FakeRedis) -> None:
        """A retried shard writes its users again (SET is idempotent)."""
        writer.write_users(client, VERSION, RECS, CFG)
        assert writer.write_users(client, VERSION, RECS, CFG) == 3
        assert client.dbsize() == 3

    def test_connection_errors_retried_then_publish_error(
        self, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls = {"n": 0}

        def broken(*args: object, **kwargs: object) -> None:
            calls["n"] += 1
            raise redis.ConnectionError("boom")

        monkeypatch.setattr(fakeredis.FakeRedis, "pipeline", broken)
        with pytest.raises(PublishError, match="user write after 4 attempts") as info:
            writer.write_users(client, VERSION, RECS, CFG)
        assert info.value.exit_code == 4
        assert calls["n"] == CFG.retries + 1  # the first chunk, then the run stops

    def test_a_refused_write_is_not_retried(
        self, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls = {"n": 0}

        def oom(*args: object, **kwargs: object) -> None:
            calls["n"] += 1
            raise redis.ResponseError("OOM command not allowed")

        monkeypatch.setattr(fakeredis.FakeRedis, "pipeline", oom)
        with pytest.raises(PublishError, match="refused user write.*OOM"):
            writer.write_users(client, VERSION, RECS, CFG)
        assert calls["n"] == 1


@pytest.mark.parametrize(
    ("errors", "ok"),
    [([], True), ([redis.TimeoutError("slow")], True), ([ConnectionError("reset")] * 4, False)],
)
def test_with_retries(errors: list[Exception], ok: bool) -> None:
    pending = list(errors)

    def flaky() -> str:
        if pending:
            raise pending.pop(0)
        return "ok"

    if ok:
        assert store.with_retries(flaky, CFG, "test") == "ok"
        assert pending == []
    else:
        with pytest.raises(PublishError, match="during test after 4 attempts"):
            store.with_retries(flaky, CFG, "test")
