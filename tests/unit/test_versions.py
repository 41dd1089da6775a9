"""versions.py on fakeredis: begin, verify, finish and flip, cleanup, rollback, abandon (#5, #15).

A version is published here exactly as a nightly run publishes it: ``begin_version``, one
``writer.write_users`` per shard, then ``finish_version``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import numpy as np
import polars as pl
import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys, status, versions, writer

CFG = RedisConfig(url="redis://unused", key_prefix="recsys", chunk_size=2, retry_backoff_seconds=0)
TTL = CFG.ttl_days * 86_400


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
USERS = pl.Series("user_id", [10, 20, 30])
ITEMS = pl.DataFrame({"item_id": [101, 106], "department": ["DELI", "PRODUCE"]})


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


WRITTEN: dict[str, writer.Written] = {}
"""What the writers stored for each version begun here (the run sums its shards' counts)."""


def begin_and_write(
    client: fakeredis.FakeRedis,
    meta: dict[str, Any] | None = None,
    recs: pl.DataFrame = RECS,
    new_items: pl.DataFrame | None = None,
) -> str:
    """A version in state ``writing`` with its users written (two shards), not finished."""
    version = versions.begin_version(client, meta or {}, CFG)
    shards = (pl.col("user_id") < 20, pl.col("user_id") >= 20)
    WRITTEN[version] = sum(
        (
            writer.write_users(
                client,
                version,
                recs.filter(shard),
                CFG,
                None if new_items is None else new_items.filter(shard),
            )
            for shard in shards
        ),
        writer.Written(),
    )
    return version


def publish(
    client: fakeredis.FakeRedis,
    popular: list[int] | None = None,
    items: pl.DataFrame | None = None,
    meta: dict[str, Any] | None = None,
) -> str:
    version = begin_and_write(client, meta)
    versions.finish_version(client, version, WRITTEN[version], popular or [1], items, CFG)
    return version


def current(client: fakeredis.FakeRedis) -> str | None:
    return status.live_version(client, CFG)


def has_user(client: fakeredis.FakeRedis, version: str, user: int) -> bool:
    return user in status.user_items(client, version, [user], CFG)


class TestIdsAndMeta:
    def test_version_ids_are_valid_distinct_and_in_time_order(self) -> None:
        """One id per second, sorting in time order (catches the timestamp dropped or not
        leading, e.g. a suffix first)."""
        night = datetime(2026, 11, 28, 3, 15, 0, tzinfo=UTC)
        starts = [night + timedelta(seconds=s) for s in (59, 0, 3600, 1, 86_400)]
        ids = [versions.new_version_id(start) for start in starts]
        assert all(keys.check_version(v) == v for v in ids)
        assert len(set(ids)) == len(starts)
        assert sorted(ids) == [v for _, v in sorted(zip(starts, ids, strict=True))]
        assert ids[1].startswith("20261128T031500Z-")

    def test_version_ids_of_one_second_differ_by_their_random_suffix(self) -> None:
        """200 ids in one second share at most 9 values: with a 16-bit suffix, 10 or more
        colliding pairs happen with probability 1.4e-12 (Poisson, 0.30 pairs expected).
        Catches a constant suffix (199 repeats) or one of 8 bits or fewer (about 61)."""
        night = datetime(2026, 11, 28, 3, 15, 0, tzinfo=UTC)
        ids = [versions.new_version_id(night) for _ in range(200)]
        assert len(ids) - len(set(ids)) <= 9

    def test_encode_meta(self) -> None:
        encoded = versions.encode_meta(
            {"run_id": "r1", "users": 3, "ok": True, "gone": None, "metrics": {"b": 1, "a": 0.5}}
        )
        assert encoded == {
            "run_id": "r1",
            "users": "3",
            "ok": "true",
            "metrics": '{"a": 0.5, "b": 1}',
        }


class TestBegin:
    def test_registers_a_writing_version_and_flips_nothing(
        self, client: fakeredis.FakeRedis
    ) -> None:
        version = versions.begin_version(client, {"run_id": "r1", "metrics": {"p": 0.2}}, CFG)
        assert status.all_versions(client, CFG) == [version]
        meta = status.version_info(client, version, CFG).meta
        assert meta["state"] == keys.STATE_WRITING
        assert meta["format"] == str(keys.FORMAT)
        assert meta["version"] == version
        assert meta["run_id"] == "r1"
        assert json.loads(meta["metrics"]) == {"p": 0.2}
        assert meta["ttl_seconds"] == str(TTL)
        assert 0 < client.ttl(keys.meta_key(version)) <= TTL
        assert current(client) is None

    def test_removes_half_written_versions_but_not_live_or_previous(
        self, client: fakeredis.FakeRedis
    ) -> None:
        first = publish(client)
        second = publish(client)
        crashed = begin_and_write(client)  # a run that died before finishing
        fresh = versions.begin_version(client, {}, CFG)
        assert status.all_versions(client, CFG) == [first, second, fresh]
        assert list(client.scan_iter(keys.version_prefix(crashed) + "*")) == []
        assert has_user(client, first, 10) and has_user(client, second, 10)


class TestFinish:
    def test_golden_layout(self, client: fakeredis.FakeRedis) -> None:
        meta = {"run_id": "r1", "metrics": {"precision@5": 0.2}}
        version = begin_and_write(client, meta)
        old = versions.finish_version(client, version, WRITTEN[version], [106, 105], ITEMS, CFG)
        assert old is None
        assert client.get("recsys:current") == version.encode()
        assert client.get("recsys:previous") is None
        assert status.user_items(client, version, [10, 20, 30], CFG) == {
            10: [101, 102, 103, 104, 105],
            20: [106, 101],
            30: [103],
        }
        assert client.hget(f"recsys:v:{version}:u:0", "20") == bytes.fromhex("0000006a00000065")
        assert client.get(f"recsys:v:{version}:popular") == b"106,105"
        items = client.hgetall(f"recsys:v:{version}:items")
        assert {k: json.loads(v) for k, v in items.items()} == {
            b"101": {"department": "DELI"},
            b"106": {"department": "PRODUCE"},
        }
        info = status.version_info(client, version, CFG)
        assert info.state == keys.STATE_COMPLETE
        assert info.users == 3
        assert (info.meta["items"], info.meta["popular"]) == ("2", "2")
        assert info.meta["run_id"] == "r1"
        assert info.metrics == {"precision@5": 0.2}
        assert status.all_versions(client, CFG) == [version]
        names = {k.decode() for k in client.scan_iter(f"recsys:v:{version}:*")}
        assert names == {
            f"recsys:v:{version}:{suffix}" for suffix in ("u:0", "popular", "items", "meta")
        }
        for name in names:  # every key of a version expires by itself, the pointers do not
            assert 0 < client.ttl(name) <= TTL
        assert client.ttl("recsys:current") == -1

    def test_without_item_attributes_there_is_no_items_hash(
        self, client: fakeredis.FakeRedis
    ) -> None:
        version = publish(client, items=None)
        assert client.exists(keys.items_key(version)) == 0
        assert status.version_info(client, version, CFG).meta["items"] == "0"

    def test_second_keeps_previous_and_third_removes_the_oldest(
        self, client: fakeredis.FakeRedis
    ) -> None:
        v1, v2, v3 = publish(client), publish(client), publish(client)
        assert (current(client), status.previous_version(client, CFG)) == (v3, v2)
        assert has_user(client, v2, 10)
        assert list(client.scan_iter(keys.version_prefix(v1) + "*")) == []
        assert status.all_versions(client, CFG) == [v2, v3]

    def test_a_user_never_written_fails_and_nothing_flips(
        self, client: fakeredis.FakeRedis
    ) -> None:
        """A shard's counts say user 40 was stored, but no writer stored it."""
        live = publish(client)
        version = begin_and_write(client)
        claimed = WRITTEN[version] + writer.Written(
            WRITTEN[version].buckets, {"u": np.bincount([0], minlength=1)}
        )
        with pytest.raises(PublishError, match="'u': 3 of 4 fields"):
            versions.finish_version(client, version, claimed, [1], None, CFG)
        assert current(client) == live
        assert status.version_info(client, version, CFG).state == keys.STATE_WRITING


# Every user has 20 items (head ``u`` + tail ``t``) and a reason per item (``r``): each family
# of the version is present, so each can go missing. One bucket (``buckets`` = 1 for 3 users).
FULL = recs_frame({u: [u * 100 + j for j in range(20)] for u in (10, 20, 30)}).with_columns(
    pl.lit("a").alias(writer.REASON)
)
NEW = recs_frame({u: [u * 1000, u * 1000 + 1] for u in (10, 20, 30)}).with_columns(
    pl.lit("promoted").alias(writer.REASON)
)
POPULAR = [106, 105]

DAMAGE = {
    "u field": lambda c, v: c.hdel(keys.user_bucket_key(v, 0, family="u"), "20"),
    "t field": lambda c, v: c.hdel(keys.user_bucket_key(v, 0, family="t"), "20"),
    "r field": lambda c, v: c.hdel(keys.user_bucket_key(v, 0, family="r"), "30"),
    "t bucket": lambda c, v: c.delete(keys.user_bucket_key(v, 0, family="t")),
    "n field": lambda c, v: c.hdel(keys.user_bucket_key(v, 0, family="n"), "10"),
    "w bucket": lambda c, v: c.delete(keys.user_bucket_key(v, 0, family="w")),
    "r bucket": lambda c, v: c.delete(keys.user_bucket_key(v, 0, family="r")),
    "stray r field": lambda c, v: c.hset(keys.user_bucket_key(v, 0, family="r"), "99", b"\0\0"),
    "popular": lambda c, v: c.delete(keys.popular_key(v)),
    "popular truncated": lambda c, v: c.set(keys.popular_key(v), b"106"),
    "meta": lambda c, v: c.delete(keys.meta_key(v)),
    "meta buckets": lambda c, v: c.hset(keys.meta_key(v), "buckets", 2),
    "item": lambda c, v: c.hdel(keys.items_key(v), "106"),
}
SHORTFALL = {
    "u field": "'u': 2 of 3 fields",
    "t field": "'t': 2 of 3 fields",
    "r field": "'r': 2 of 3 fields",
    "t bucket": "'t': 0 of 3 fields",
    "n field": "'n': 2 of 3 fields",
    "w bucket": "'w': 0 of 3 fields",
    "r bucket": "'r': 0 of 3 fields",
    "stray r field": "'r': 4 of 3 fields",
    "popular": "the popular list differs",
    "popular truncated": "the popular list differs",
    "meta": "0 buckets recorded in the meta hash, 1 written",
    "meta buckets": "2 buckets recorded in the meta hash, 1 written",
    "item": "1 of 2 item fields",
}


def written_full(client: fakeredis.FakeRedis) -> tuple[str, writer.Written]:
    version = begin_and_write(client, recs=FULL, new_items=NEW)
    return version, WRITTEN[version]


class TestVerify:
    def test_every_family_is_written_and_a_whole_version_passes(
        self, client: fakeredis.FakeRedis
    ) -> None:
        version, written = written_full(client)
        assert {f: written.total(f) for f in keys.USER_FAMILIES} == dict.fromkeys("utrnw", 3)
        versions.finish_version(client, version, written, POPULAR, ITEMS, CFG)
        assert current(client) == version

    @pytest.mark.parametrize("damage", sorted(DAMAGE))
    def test_each_damaged_piece_fails(self, client: fakeredis.FakeRedis, damage: str) -> None:
        version, written = written_full(client)
        versions.finish_version(client, version, written, POPULAR, ITEMS, CFG)
        DAMAGE[damage](client, version)
        with pytest.raises(PublishError, match=SHORTFALL[damage]) as info:
            versions.verify_version(client, version, written, POPULAR, 2, CFG)
        assert info.value.exit_code == 4

    @pytest.mark.parametrize("damage", sorted(DAMAGE))
    def test_a_piece_lost_before_verification_flips_nothing(
        self, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, damage: str
    ) -> None:
        """Evicted between writing and verifying (maxmemory-policy): the live one stays."""
        live = publish(client, items=ITEMS)
        version, written = written_full(client)
        verify = versions.verify_version

        def evict_then_verify(c: Any, v: str, *args: Any) -> None:
            DAMAGE[damage](c, v)
            verify(c, v, *args)

        monkeypatch.setattr(versions, "verify_version", evict_then_verify)
        with pytest.raises(PublishError, match="verification failed"):
            versions.finish_version(client, version, written, POPULAR, ITEMS, CFG)
        assert current(client) == live
        assert status.previous_version(client, CFG) is None
        assert status.version_info(client, version, CFG).state != keys.STATE_COMPLETE
        assert status.all_versions(client, CFG) == [live, version]


class TestAbandonAndCleanup:
    def test_abandon_removes_the_unfinished_version_only(self, client: fakeredis.FakeRedis) -> None:
        live = publish(client)
        version = begin_and_write(client)
        versions.abandon_version(client, version, CFG)
        assert list(client.scan_iter(keys.version_prefix(version) + "*")) == []
        assert status.all_versions(client, CFG) == [live]
        assert current(client) == live
        assert has_user(client, live, 30)

    def test_abandon_tries_once_and_does_not_raise(
        self, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        version = begin_and_write(client)
        calls = {"n": 0}

        def broken(*args: object, **kwargs: object) -> None:
            calls["n"] += 1
            raise redis.ConnectionError("gone")

        monkeypatch.setattr(fakeredis.FakeRedis, "unlink", broken)
        versions.abandon_version(client, version, CFG)  # logs, the next run removes it
        assert calls["n"] == 1
        monkeypatch.undo()
        assert status.all_versions(client, CFG) == [version]

    def test_cleanup_keeps_what_it_is_told_to(self, client: fakeredis.FakeRedis) -> None:
        v1, v2 = publish(client), publish(client)
        v3 = begin_and_write(client)
        assert versions.cleanup_versions(client, CFG, keep={v2, v3}) == [v1]
        assert status.all_versions(client, CFG) == [v2, v3]
        assert list(client.scan_iter(keys.version_prefix(v1) + "*")) == []
        assert has_user(client, v2, 10) and has_user(client, v3, 10)

    def test_unlink_version_counts_what_it_removed(self, client: fakeredis.FakeRedis) -> None:
        version = begin_and_write(client)
        assert versions.unlink_version(client, version, CFG) == 2  # 1 user bucket + meta
        assert client.zcard(keys.versions_key()) == 0

    def test_begin_retries_then_publish_error(
        self, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        live = publish(client)
        calls = {"n": 0}

        def broken(*args: object, **kwargs: object) -> None:
            calls["n"] += 1
            raise redis.ConnectionError("boom")

        monkeypatch.setattr(fakeredis.FakeRedis, "pipeline", broken)
        with pytest.raises(PublishError, match="version start after 4 attempts"):
            versions.begin_version(client, {}, CFG)
        assert calls["n"] == CFG.retries + 1
        monkeypatch.undo()
        assert current(client) == live


class TestFlip:
    def test_flip_moves_current_and_previous(self, client: fakeredis.FakeRedis) -> None:
        assert versions.flip_pointer(client, "a", CFG) is None
        assert versions.flip_pointer(client, "b", CFG) == "a"
        assert (current(client), status.previous_version(client, CFG)) == ("b", "a")

    def test_reflipping_the_live_version_keeps_previous(self, client: fakeredis.FakeRedis) -> None:
        versions.flip_pointer(client, "a", CFG)
        versions.flip_pointer(client, "b", CFG)
        assert versions.flip_pointer(client, "b", CFG) == "b"
        assert status.previous_version(client, CFG) == "a"


class TestRollbackAndStatus:
    def test_rollback_swaps_and_refreshes_ttl(self, client: fakeredis.FakeRedis) -> None:
        v1, v2 = publish(client), publish(client)
        client.expire(keys.user_key(v1, 10, 1), 5)
        assert versions.rollback(client, CFG) == (v1, v2)
        assert (current(client), status.previous_version(client, CFG)) == (v1, v2)
        assert client.ttl(keys.user_key(v1, 10, 1)) > TTL - 5
        assert versions.rollback(client, CFG) == (v2, v1)  # rolling back undoes the rollback

    def test_rollback_without_previous_fails(self, client: fakeredis.FakeRedis) -> None:
        publish(client)
        with pytest.raises(PublishError, match="nothing to roll back"):
            versions.rollback(client, CFG)

    def test_rollback_to_an_expired_version_fails(self, client: fakeredis.FakeRedis) -> None:
        v1, v2 = publish(client), publish(client)
        for name in list(client.scan_iter(keys.version_prefix(v1) + "*")):
            client.delete(name)
        with pytest.raises(PublishError, match="expired"):
            versions.rollback(client, CFG)
        assert current(client) == v2

    def test_status(self, client: fakeredis.FakeRedis) -> None:
        assert status.publish_status(client, CFG) == {"live": None, "previous": None}
        meta = {"metrics": {"precision@5": 0.25}}
        v1, v2 = publish(client, meta=meta), publish(client, meta=meta)
        shown = status.publish_status(client, CFG)
        assert shown["live"]["version"] == v2
        assert shown["live"]["state"] == keys.STATE_COMPLETE
        assert shown["live"]["users"] == 3
        assert shown["live"]["metrics"] == {"precision@5": 0.25}
        assert shown["previous"]["version"] == v1

    @pytest.mark.parametrize(
        ("raw", "metrics"), [(None, {}), ("not json", {}), ("[1]", {}), ('{"a": 1}', {"a": 1})]
    )
    def test_version_info_metrics(self, raw: str | None, metrics: dict[str, Any]) -> None:
        meta = {"metrics": raw} if raw is not None else {}
        assert status.VersionInfo("v", meta).metrics == metrics
