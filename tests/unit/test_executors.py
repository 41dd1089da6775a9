"""Executors: shard order, retries, the error that stops a run; the publishing driver (#8, #15).

No model here: a shard function stands for :func:`shard_task.run_shard` (the real one runs in
``tests/integration``), and the driver's version lifecycle runs on fakeredis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fakeredis
import polars as pl
import pytest
import redis

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.errors import EmptyStageError, PublishError, RecsysError
from recsys_batch.publish import keys, status, writer
from recsys_batch.run import dask_executor as D
from recsys_batch.run import executors as E
from recsys_batch.run import shard_context, shard_retries, sharding
from recsys_batch.run import shard_task as T


def shards(n: int) -> list[tuple[int, pl.DataFrame]]:
    return [(s, pl.DataFrame({C.USER: [s * 10, s * 10 + 1]})) for s in range(n)]


def context() -> T.ShardContext:
    return T.ShardContext(
        model=None,
        catalogue_items=pl.DataFrame({C.ITEM: [1]}),
        item_table=pl.DataFrame({C.ITEM: [1]}),
        reference_rows=pl.DataFrame({C.USER: [T.SENTINEL_USER]}),
        settings=Settings(),
        n_shards=3,
    )


def echo(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
    return T.ShardResult(shard=shard, users=users.height, rows=users.height * 5)


class TestLocalExecutor:
    def test_results_in_shard_order(self) -> None:
        results = E.LocalExecutor().map_shards(echo, context(), shards(3))
        assert [r.shard for r in results] == [0, 1, 2]
        assert [r.users for r in results] == [2, 2, 2]

    @pytest.mark.parametrize(
        ("failures", "retries", "ok"), [(1, 1, True), (2, 2, True), (2, 1, False)]
    )
    def test_retries(self, failures: int, retries: int, ok: bool) -> None:
        calls: list[int] = []

        def flaky(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
            calls.append(shard)
            if shard == 1 and calls.count(1) <= failures:
                msg = "boom"
                raise redis.ConnectionError(msg)
            return echo(ctx, shard, users)

        executor = E.LocalExecutor(retries=retries)
        if ok:
            assert len(executor.map_shards(flaky, context(), shards(3))) == 3
            assert calls.count(1) == failures + 1
        else:
            with pytest.raises(
                shard_retries.ShardError, match=r"shard 1 failed after 2 attempt\(s\).*boom"
            ):
                executor.map_shards(flaky, context(), shards(3))
            assert 2 not in calls  # the run stops at the first shard that keeps failing


def test_make_executor_follows_the_config() -> None:
    local = E.make_executor(Settings())
    assert isinstance(local, E.LocalExecutor)
    settings = Settings(scale={"executor": "dask", "scheduler_address": "tcp://h:8786"})
    remote = E.make_executor(settings)
    assert isinstance(remote, D.DaskExecutor)
    assert remote.address == "tcp://h:8786"
    assert remote.retries == settings.scale.shard_retries


def test_plan_shards_skips_empty_shards() -> None:
    planned = E.plan_shards(pl.LazyFrame({C.USER: [1, 2]}), 16)
    assert 1 <= len(planned) <= 2
    assert sorted(u for _, part in planned for u in part[C.USER]) == [1, 2]
    for shard, part in planned:
        assert part.select(sharding.shard_of(16)).to_series().eq(shard).all()


def test_shard_transactions_reads_its_users_only(tmp_path: object) -> None:
    ctx = context()
    tx = pl.DataFrame({C.USER: list(range(30)), C.ITEM: list(range(30))})
    ctx.transactions = tx
    got = pl.concat([ctx.shard_transactions(s) for s in range(3)])
    assert sorted(got[C.USER]) == list(range(30))
    for s in range(3):
        assert ctx.shard_transactions(s).select(sharding.shard_of(3)).to_series().eq(s).all()


def test_reference_rows_carry_the_newest_day_before_the_cut() -> None:
    tx = pl.LazyFrame(
        {
            C.USER: [1, 2, 3],
            C.BASKET: [1, 2, 3],
            C.ITEM: [5, 6, 7],
            C.DAY: [10, 20, 30],
            C.WEEK: [2, 3, 5],
        }
    )
    ref = shard_context.reference_rows(tx, as_of_week=5)
    assert ref.height == 1
    assert ref.row(0, named=True)[C.DAY] == 20
    assert ref[C.USER].to_list() == [T.SENTINEL_USER]


def test_a_failed_shard_exits_like_a_failed_publish() -> None:
    assert shard_retries.ShardError("shard 3 failed").exit_code == 4


def test_a_data_error_in_a_shard_is_not_retried_and_keeps_its_exit_code() -> None:
    calls: list[int] = []

    def empty(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
        calls.append(shard)
        msg = "no candidates"
        raise EmptyStageError(msg)

    with pytest.raises(EmptyStageError) as caught:
        E.LocalExecutor(retries=3).map_shards(empty, context(), shards(2))
    assert caught.value.exit_code == 2
    assert calls == [0]


@pytest.mark.parametrize("n_shards", [1, 3])  # 1: every row, without hashing (one shard)
def test_partitioned_transactions_match_the_filter(n_shards: int) -> None:
    ctx = context()
    ctx.n_shards = n_shards
    tx = pl.DataFrame({C.USER: list(range(40)), C.ITEM: list(range(40))})
    ctx.partitions = shard_context.partition_transactions(tx, n_shards)
    ctx.transactions = tx
    for s in range(n_shards):
        by_partition = ctx.shard_transactions(s)
        ctx.partitions, saved = None, ctx.partitions
        assert by_partition.equals(ctx.shard_transactions(s))
        ctx.partitions = saved
    assert ctx.partitions is not None
    assert ctx.partitions[-1].height == 0
    assert ctx.partitions[-1].columns == [C.USER, C.ITEM]


def test_a_publish_error_in_a_shard_is_not_retried_and_keeps_its_exit_code() -> None:
    """Redis failed after the writer's own retries (redis.retries): no second layer (#15)."""
    calls: list[int] = []

    def redis_gone(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
        calls.append(shard)
        msg = "Redis failed during user write after 4 attempts"
        raise PublishError(msg)

    with pytest.raises(PublishError, match="user write after 4 attempts") as caught:
        E.LocalExecutor(retries=3).map_shards(redis_gone, context(), shards(3))
    assert type(caught.value) is PublishError  # not wrapped in a ShardError
    assert caught.value.exit_code == 4
    assert calls == [0]


REDIS_FAILURES = [
    redis.ConnectionError("reset"),
    redis.TimeoutError("timed out"),
    ConnectionResetError("reset by peer"),
    TimeoutError("timed out"),
]
BUGS = [TypeError("unsupported operand"), KeyError("user_id"), RuntimeError("boom"), OSError("x")]


@pytest.mark.parametrize("error", REDIS_FAILURES, ids=lambda e: type(e).__name__)
def test_redis_failures_in_a_shard_are_retried(error: Exception) -> None:
    calls: list[int] = []

    def flaky(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
        calls.append(shard)
        if calls.count(shard) == 1:
            raise error
        return echo(ctx, shard, users)

    results = E.LocalExecutor(retries=1).map_shards(flaky, context(), shards(2))
    assert [r.shard for r in results] == [0, 1]
    assert calls == [0, 0, 1, 1]


@pytest.mark.parametrize("error", BUGS, ids=lambda e: type(e).__name__)
def test_a_bug_in_a_shard_is_not_retried_and_keeps_its_type(error: Exception) -> None:
    """Regression (#29): a plain bug (``TypeError``) was retried and then reported as a
    ``ShardError``, exit 4 "Redis unavailable". It must propagate as it is, at once (the CLI
    exits 1 with it); catches a retry predicate that accepts any ``Exception`` again."""
    calls: list[int] = []

    def buggy(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
        calls.append(shard)
        raise error

    with pytest.raises(type(error)) as caught:
        E.LocalExecutor(retries=3).map_shards(buggy, context(), shards(3))
    assert caught.value is error  # not wrapped in a ShardError, no exit code of ours
    assert not isinstance(caught.value, RecsysError)
    assert calls == [0]


class TestCheckRecommendations:
    """The contract of the published lists (placeholder 999999 is never recommended)."""

    @staticmethod
    def ctx() -> T.ShardContext:
        ctx = context()
        ctx.catalogue_items = pl.DataFrame({C.ITEM: list(range(1, 22))})
        return ctx

    @staticmethod
    def recs(users: list[int], items: list[int]) -> pl.DataFrame:
        ranks = [sum(1 for u in users[: n + 1] if u == user) for n, user in enumerate(users)]
        return pl.DataFrame({C.USER: users, C.ITEM: items, C.RANK: ranks})

    def test_clean_lists_pass(self) -> None:
        T.check_recommendations(self.recs([1, 1, 2], [1, 2, 1]), self.ctx())

    @pytest.mark.parametrize(
        ("users", "items", "problem"),
        [
            ([1, 1], [1, 999999], "1 non-catalogue/placeholder rows"),
            ([1, 1], [1, 77], "1 non-catalogue/placeholder rows"),
            ([1, 1, 2], [3, 3, 3], "2 duplicate rows"),
            ([1] * 21, list(range(1, 22)), "1 users with more than 20 items"),
        ],
    )
    def test_broken_lists_are_refused(
        self, users: list[int], items: list[int], problem: str
    ) -> None:
        with pytest.raises(RecsysError, match=problem):
            T.check_recommendations(self.recs(users, items), self.ctx())


class TestPublishShards:
    """The driver: begin once, every shard writes, finish and flip once; else abandon."""

    USERS = pl.LazyFrame({C.USER: list(range(30))})

    @pytest.fixture
    def client(self) -> fakeredis.FakeRedis:
        return fakeredis.FakeRedis()

    @staticmethod
    def ctx(client: fakeredis.FakeRedis) -> T.ShardContext:
        ctx = context()
        ctx.settings = Settings(redis={"url": "redis://unused", "retry_backoff_seconds": 0})
        ctx.driver_client = client
        return ctx

    @staticmethod
    def writing(live_seen: list[Any], marker: int = 7) -> T.ShardFn:
        """Writes item ``marker`` for each user, as run_shard writes its scored lists."""

        def shard_fn(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
            assert ctx.version is not None
            live_seen.append(status.live_version(ctx.driver_client, ctx.settings.redis))
            recs = users.with_columns(
                pl.lit(marker, pl.Int64).alias(C.ITEM), pl.lit(1, pl.Int32).alias(C.RANK)
            )
            written = writer.write_users(ctx.driver_client, ctx.version, recs, ctx.settings.redis)
            return T.ShardResult(
                shard,
                written.users,
                written.users,
                [marker],
                written=written,
            )

        return shard_fn

    def publish(
        self, client: fakeredis.FakeRedis, fn: T.ShardFn, executor: Any = None
    ) -> E.ShardedRun:
        return E.publish_shards(
            self.ctx(client),
            self.USERS,
            executor or E.LocalExecutor(retries=1),
            client,
            [5, 6],
            {"run_id": "r"},
            fn=fn,
        )

    def test_items_carry_the_median_unit_price_of_the_item_table(
        self, client: fakeredis.FakeRedis
    ) -> None:
        """The published ``price`` is the item table's ``i_price`` (rounded to 4 places), for
        served items only; an item the table has no price for gets null. Catches a publish
        that drops ``price`` or takes it from another column."""
        ctx = self.ctx(client)
        ctx.items = pl.DataFrame({C.ITEM: [5, 6, 7], C.DEPARTMENT: ["A", "B", "C"]})
        ctx.item_table = pl.DataFrame({C.ITEM: [5, 7], "i_price": [1.234567, 9.5]})
        run = E.publish_shards(
            ctx, self.USERS, E.LocalExecutor(retries=1), client, [5, 6], {}, fn=self.writing([])
        )
        assert run.version is not None
        stored = client.hgetall(keys.items_key(run.version, ctx.settings.redis.key_prefix))
        got = {int(k): json.loads(v) for k, v in stored.items()}
        assert got == {  # 5, 6: the popular list; 7: the shards' lists
            5: {"department": "A", "price": 1.2346},
            6: {"department": "B", "price": None},
            7: {"department": "C", "price": 9.5},
        }

    def test_every_shard_into_one_version_flipped_once(self, client: fakeredis.FakeRedis) -> None:
        first = self.publish(client, self.writing([], marker=1))
        seen: list[Any] = []
        run = self.publish(client, self.writing(seen, marker=2))
        assert len(seen) == 3  # three shards, each while the old version was still live
        assert seen == [first.version] * 3
        assert status.live_version(client, Settings().redis) == run.version
        assert run.users == 30
        info = status.version_info(client, run.version or "", Settings().redis)
        assert (info.state, info.users, info.meta["run_id"]) == (keys.STATE_COMPLETE, 30, "r")
        stored = status.user_items(client, run.version or "", list(range(30)), Settings().redis)
        assert set(stored) == set(range(30))
        assert {tuple(items) for items in stored.values()} == {(2,)}
        assert client.get(keys.popular_key(run.version or "")) == b"5,6"

    def test_a_failed_shard_abandons_the_version_and_flips_nothing(
        self, client: fakeredis.FakeRedis
    ) -> None:
        live = self.publish(client, self.writing([])).version
        calls: list[int] = []
        write = self.writing([])

        def third_fails(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
            calls.append(shard)
            if len(calls) == 3:
                msg = "Redis failed during user write after 4 attempts"
                raise PublishError(msg)
            return write(ctx, shard, users)

        with pytest.raises(PublishError, match="user write"):
            self.publish(client, third_fails)
        assert len(calls) == 3  # not retried
        cfg = Settings().redis
        assert status.live_version(client, cfg) == live
        assert status.all_versions(client, cfg) == [live]  # the half-written one was removed
        assert len(status.version_user_ids(client, live or "", cfg)) == 30

    def test_a_shard_that_keeps_failing_is_a_shard_error(self, client: fakeredis.FakeRedis) -> None:
        def always(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
            msg = "connection reset"
            raise redis.ConnectionError(msg)

        with pytest.raises(shard_retries.ShardError, match="after 2 attempt") as caught:
            self.publish(client, always)
        assert caught.value.exit_code == 4
        assert status.all_versions(client, Settings().redis) == []
        assert client.dbsize() == 0

    def test_a_bug_abandons_the_version_and_flips_nothing(
        self, client: fakeredis.FakeRedis
    ) -> None:
        """A ``TypeError`` in the second shard: raised as it is, not retried, and the
        version the first shard wrote is removed; the live version stays (#29)."""
        live = self.publish(client, self.writing([])).version
        calls: list[int] = []
        write = self.writing([])

        def second_is_buggy(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
            calls.append(shard)
            if len(calls) == 2:
                msg = "unsupported operand type(s) for +: 'int' and 'str'"
                raise TypeError(msg)
            return write(ctx, shard, users)

        with pytest.raises(TypeError):
            self.publish(client, second_is_buggy)
        assert len(calls) == 2  # not retried, the third shard never ran
        cfg = Settings().redis
        assert status.live_version(client, cfg) == live
        assert status.all_versions(client, cfg) == [live]

    def test_zero_recommendations_publish_nothing(self, client: fakeredis.FakeRedis) -> None:
        def nobody(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
            return T.ShardResult(shard, 0, 0)

        with pytest.raises(EmptyStageError, match="zero recommendations") as caught:
            self.publish(client, nobody)
        assert caught.value.exit_code == 2
        assert client.dbsize() == 0


class TestShippedToWorkers:
    """What a Dask worker gets (#17): the shard location, never the transactions."""

    def test_make_executor_starts_worker_processes(self) -> None:
        settings = Settings(
            scale={"executor": "dask", "dask_workers": 3, "dask_threads_per_worker": 2}
        )
        executor = E.make_executor(settings)
        assert isinstance(executor, D.DaskExecutor)
        assert (executor.address, executor.workers) == (None, 3)
        assert (executor.processes, executor.threads_per_worker) == (True, 2)

    def test_in_memory_shards_are_refused(self) -> None:
        ctx = context()
        ctx.partitions = shard_context.partition_transactions(
            pl.DataFrame({C.USER: [1], C.ITEM: [2]}), 3
        )
        with pytest.raises(ValueError, match="shards_dir"):
            D.for_workers(ctx)
        with pytest.raises(ValueError, match="shards_dir"):
            D.DaskExecutor(address="tcp://h:8786", processes=False).shipped(ctx)

    def test_threads_in_this_process_may_keep_in_memory_shards(self) -> None:
        ctx = context()
        ctx.partitions = {-1: pl.DataFrame()}
        assert D.DaskExecutor(processes=False).shipped(ctx).partitions is ctx.partitions

    def test_paths_are_absolute_and_the_driver_keeps_its_client(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        ctx = context()
        ctx.settings = Settings(
            redis={"url": "rediss://r:6380/0", "tls_ca_file": "tls/ca.pem", "cluster": False}
        )
        ctx.shards_dir = Path("runs/r1/shards")
        ctx.output_dir = Path("runs/r1/recommendations.parquet")
        ctx.driver_client = object()
        shipped = D.for_workers(ctx)
        assert shipped.shards_dir == tmp_path / "runs/r1/shards"
        assert shipped.settings.redis.tls_ca_file == tmp_path / "tls/ca.pem"
        assert shipped.settings.redis.embedded_dir.is_absolute()
        assert shipped.settings.redis.url == "rediss://r:6380/0"
        assert shipped.driver_client is None and shipped.output_dir is None
        assert shipped.return_recommendations
        assert ctx.driver_client is not None  # the driver's context is unchanged

    def test_a_url_location_stays_a_url(self) -> None:
        ctx = context()
        ctx.shards_dir = "s3://bucket/recsys/r1/shards/"
        assert D.for_workers(ctx).shards_dir == "s3://bucket/recsys/r1/shards"
        assert sharding.shard_dir("s3://b/x", 7) == "s3://b/x/shard=00007"

    def test_the_driver_writes_what_a_worker_hands_back(self, tmp_path: Path) -> None:
        ctx = context()
        ctx.output_dir = tmp_path / "recommendations.parquet"
        ctx.version = "v1"
        recs = pl.DataFrame({C.USER: [1], C.ITEM: [2], C.RANK: [1]})
        result = D._saved(T.ShardResult(shard=4, users=1, rows=1, recommendations=recs), ctx)
        assert result.recommendations is None  # publishing: not kept in memory
        assert pl.read_parquet(ctx.output_dir / "shard=00004.parquet").equals(recs)
