"""writer.py: packing a shard's users into bucket hashes and writing them (issues #5, #15, #18).

fakeredis and a real server take the same path (redis-py pipelines); the real server, TLS,
ACL and cluster cases are in ``tests/integration``.
"""

from __future__ import annotations

import fakeredis
import numpy as np
import polars as pl
import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys, status, store, writer

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


LISTS = {10: [101, 102, 103, 104, 105], 20: [106, 101], 30: [103]}
RECS = recs_frame(LISTS)


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


class TestPacking:
    def test_items_best_first_whatever_the_row_order(self) -> None:
        packed = writer.packed_users(RECS.reverse(), buckets=1)
        got = dict(zip(packed.user_ids.tolist(), packed.head, strict=True))
        assert got == {u: keys.pack_items(items) for u, items in LISTS.items()}

    def test_sorted_by_bucket(self) -> None:
        many = recs_frame({u: [1] for u in range(200)})
        packed = writer.packed_users(many, buckets=7)
        assert packed.bucket.tolist() == sorted(packed.bucket.tolist())
        assert packed.bucket.tolist() == [keys.bucket_of(u, 7) for u in packed.user_ids.tolist()]

    def test_head_holds_16_items_and_the_tail_the_rest(self) -> None:
        packed = writer.packed_users(recs_frame({1: list(range(100, 120))}), buckets=1)
        assert keys.unpack_items(packed.head[0]) == list(range(100, 116))
        assert keys.unpack_items(packed.tail[0]) == list(range(116, 120))
        assert len(packed.head[0]) == 64  # the default hash-max-listpack-value

    @pytest.mark.parametrize(
        ("bad", "match"),
        [
            (recs_frame({-5: [101]}), "negative"),
            (recs_frame({10: [999]}), "repeat a"),
            (recs_frame({7: [2**32]}), "item ids must be"),
            (recs_frame({7: list(range(33))}), "at most 32"),
        ],
    )
    def test_refused(self, bad: pl.DataFrame, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            writer.check_recommendations(RECS.vstack(bad))


class TestWriteUsers:
    def test_writes_every_user_into_buckets_with_the_ttl(self, client: fakeredis.FakeRedis) -> None:
        assert writer.write_users(client, VERSION, RECS, CFG).users == 3  # chunks of 2 users
        assert status.user_items(client, VERSION, [10, 20, 30, 40], CFG) == LISTS
        ttl = writer.ttl_seconds(CFG)
        assert ttl == CFG.ttl_days * 86_400
        names = set(client.scan_iter("recsys:v:v1:u:*"))
        assert names == {keys.user_key(VERSION, u, 1).encode() for u in LISTS}
        for name in names:
            assert ttl - 5 < client.ttl(name) <= ttl
        # user buckets and the bucket count in the meta hash: no pointer
        assert client.hget(keys.meta_key(VERSION), "buckets") == b"1"
        assert client.dbsize() == 2

    def test_bucket_count_is_the_first_writers(self, client: fakeredis.FakeRedis) -> None:
        cfg = CFG.model_copy(update={"user_buckets": 5})
        writer.write_users(client, VERSION, RECS, cfg)
        more = recs_frame({u: [1, 2] for u in range(100, 300)})
        assert writer.write_users(client, VERSION, more, CFG).users == 200  # proposes 4, uses 5
        assert client.hget(keys.meta_key(VERSION), "buckets") == b"5"
        assert len(status.version_user_ids(client, VERSION, CFG)) == 203

    def test_tail_and_reasons_in_their_own_hashes(self, client: fakeredis.FakeRedis) -> None:
        long = recs_frame({7: list(range(100, 120))}).with_columns(
            pl.Series("reason", ["r2.3"] + ["a"] * 19)
        )
        writer.write_users(client, VERSION, long, CFG)
        assert status.user_items(client, VERSION, [7], CFG) == {7: list(range(100, 120))}
        reasons = client.hget(keys.user_bucket_key(VERSION, 0, family="r"), "7")
        assert reasons == keys.encode_reasons(["r2.3"] + ["a"] * 19)  # 40 bytes: a listpack
        assert keys.decode_reasons(reasons)[:2] == [
            {"code": "repeat", "times": 2, "last_days": 3},
            {"code": "als"},
        ]

    def test_vectorised_reasons_match_the_contract(self) -> None:
        texts = ["r9.12", "r0.0", "r70.600", "b", "a", "t", "p", None, "x"]
        got = pl.select(writer.reason_values(pl.Series("t", texts, pl.String)))["reason"]
        assert got.to_list() == [keys.reason_value(t) for t in texts]

    def test_key_prefix_is_honoured(self, client: fakeredis.FakeRedis) -> None:
        cfg = CFG.model_copy(update={"key_prefix": "other"})
        writer.write_users(client, VERSION, RECS, cfg)
        assert status.user_items(client, VERSION, [20], cfg) == {20: [106, 101]}
        assert list(client.scan_iter("recsys:*")) == []

    def test_no_rows_write_nothing(self, client: fakeredis.FakeRedis) -> None:
        assert writer.write_users(client, VERSION, RECS.head(0), CFG).users == 0
        assert client.dbsize() == 0

    @pytest.mark.parametrize(
        "bad", [recs_frame({-5: [101]}), recs_frame({10: [999]}), recs_frame({1: [-1]})]
    )
    def test_bad_rows_write_nothing(self, client: fakeredis.FakeRedis, bad: pl.DataFrame) -> None:
        with pytest.raises(ValueError):
            writer.write_users(client, VERSION, RECS.vstack(bad), CFG)
        assert client.dbsize() == 0

    def test_returns_the_users_found_not_the_ones_sent(
        self, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        original = writer.packed_users

        def loses_a_user(recs: pl.DataFrame, buckets: int) -> writer.PackedUsers:
            return original(recs.filter(pl.col("user_id") != 20), buckets)

        monkeypatch.setattr(writer, "packed_users", loses_a_user)
        assert writer.write_users(client, VERSION, RECS, CFG).users == 2

    def test_rewriting_a_shard_is_harmless(self, client: fakeredis.FakeRedis) -> None:
        """A retried shard writes its users again (HSET is idempotent)."""
        writer.write_users(client, VERSION, RECS, CFG)
        assert writer.write_users(client, VERSION, RECS, CFG).users == 3
        assert status.version_user_ids(client, VERSION, CFG) == [10, 20, 30]

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
        assert calls["n"] == CFG.retries + 1  # the first round trip, then the run stops

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


class DropsOneField:
    """A client whose pipelines silently drop the first field sent to one family's hashes."""

    def __init__(self, client: fakeredis.FakeRedis, family: str) -> None:
        self.client, self.marker, self.dropped = client, f":{family}:", False

    def __getattr__(self, name: str) -> object:
        return getattr(self.client, name)

    def pipeline(self, transaction: bool = False) -> object:
        pipe = self.client.pipeline(transaction=transaction)
        hset = pipe.hset

        def lossy_hset(key: str, *args: object, items: list[bytes] | None = None) -> object:
            if items and self.marker in key and not self.dropped:
                self.dropped, items = True, items[2:]
                if not items:
                    return pipe
            return hset(key, *args, items=items)

        pipe.hset = lossy_hset  # type: ignore[method-assign]
        return pipe


class TestCountBackEveryFamily:
    FULL = recs_frame({u: [u * 100 + j for j in range(20)] for u in (10, 20, 30)}).with_columns(
        pl.lit("b").alias(writer.REASON)
    )
    NEW = recs_frame({u: [u * 1000, u * 1000 + 1] for u in (10, 20, 30)}).with_columns(
        pl.lit("trending").alias(writer.REASON)
    )

    def test_counts_of_every_family_per_bucket(self, client: fakeredis.FakeRedis) -> None:
        written = writer.write_users(client, VERSION, self.FULL, CFG, new_items=self.NEW)
        assert written.buckets == 1
        assert {f: written.per_bucket(f).tolist() for f in keys.USER_FAMILIES} == {
            "u": [3],
            "t": [3],
            "r": [3],
            "n": [3],
            "w": [3],
        }
        short = writer.write_users(client, "v2", RECS, CFG)  # no tails, no reasons
        assert (short.total("u"), short.total("t"), short.total("r")) == (3, 0, 0)

    @pytest.mark.parametrize("family", keys.USER_FAMILIES)
    def test_a_field_lost_in_any_family_fails_the_shard(
        self, client: fakeredis.FakeRedis, family: str
    ) -> None:
        """Mutation caught: counting back the ``u`` family only (as before #29)."""
        lossy = DropsOneField(client, family)
        with pytest.raises(PublishError, match=f"1 of 3 '{family}'|2 of 3 '{family}'"):
            writer.write_users(lossy, VERSION, self.FULL, CFG, self.NEW)  # type: ignore[arg-type]
        assert lossy.dropped

    def test_counts_add_bucket_by_bucket(self) -> None:
        a = writer.Written(3, {"u": np.array([1, 0, 2]), "t": np.array([0, 0, 1])})
        b = writer.Written(3, {"u": np.array([0, 4, 0])})
        both = a + b
        assert both.per_bucket("u").tolist() == [1, 4, 2]
        assert both.per_bucket("t").tolist() == [0, 0, 1]
        assert both.per_bucket("r").tolist() == [0, 0, 0]
        assert (writer.Written() + a) is a and (a + writer.Written()) is a
        with pytest.raises(ValueError, match="3 and 2 buckets"):
            _ = a + writer.Written(2, {"u": np.array([1, 1])})


class TestNewItems:
    """The new-items list (#26): families ``n`` (items) and ``w`` (reasons), counted and
    verified like the main list's."""

    NEW = pl.DataFrame(
        {
            "user_id": [10, 10, 20],
            "item_id": [901, 902, 903],
            "rank": [1, 2, 1],
            "reason": ["promoted", "bought_with", "similar_customers"],
        },
        schema_overrides={"rank": pl.Int32},
    )

    def test_stored_with_reasons_and_counted(self, client: fakeredis.FakeRedis) -> None:
        written = writer.write_users(client, VERSION, RECS, CFG, new_items=self.NEW)
        assert (written.total("n"), written.total("w")) == (2, 2)  # user 30 has none
        stored = status.user_new_items(client, VERSION, [10, 20, 30], CFG)
        assert stored == {10: [(901, "promoted"), (902, "bought_with")], 20: [(903, "als")]}
        buckets = written.buckets
        raw = client.hget(
            keys.user_bucket_key(VERSION, keys.bucket_of(10, buckets), "recsys", "n"), "10"
        )
        assert raw == bytes.fromhex("0000038500000386")  # golden: 901, 902 big-endian
        why = client.hget(
            keys.user_bucket_key(VERSION, keys.bucket_of(10, buckets), "recsys", "w"), "10"
        )
        assert why == bytes.fromhex("00040001")  # promoted = 4, bought_with = 1
        assert status.user_items(client, VERSION, [10], CFG) == {10: LISTS[10]}  # main list kept

    @pytest.mark.parametrize(
        ("change", "error"),
        [
            (pl.col("user_id").replace(20, 99), "no main list"),
            (pl.col("reason").replace("promoted", "cheap"), "unknown new-item reason"),
            (pl.col("rank").replace(2, 1), "repeat a .user_id, rank."),
        ],
    )
    def test_refused_before_anything_is_written(
        self, client: fakeredis.FakeRedis, change: pl.Expr, error: str
    ) -> None:
        bad = self.NEW.with_columns(change)
        with pytest.raises(ValueError, match=error):
            writer.write_users(client, VERSION, RECS, CFG, new_items=bad)
        assert list(client.scan_iter("recsys:v:*:n:*")) == []

    def test_too_many_new_items_refused(self, client: fakeredis.FakeRedis) -> None:
        many = pl.DataFrame(
            {
                "user_id": [10] * 17,
                "item_id": range(17),
                "rank": range(1, 18),
                "reason": ["trending"] * 17,
            },
            schema_overrides={"rank": pl.Int32},
        )
        with pytest.raises(ValueError, match="17 new items"):
            writer.write_users(client, VERSION, RECS, CFG, new_items=many)
