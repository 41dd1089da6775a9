"""Executors: shard order, retries, the error that stops a run (no model, no Redis)."""

from __future__ import annotations

import polars as pl
import pytest

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.run import executors as E
from recsys_batch.run import sharding


def shards(n: int) -> list[tuple[int, pl.DataFrame]]:
    return [(s, pl.DataFrame({C.USER: [s * 10, s * 10 + 1]})) for s in range(n)]


def context() -> E.ShardContext:
    return E.ShardContext(
        model=None,
        catalogue_items=pl.DataFrame({C.ITEM: [1]}),
        item_table=pl.DataFrame({C.ITEM: [1]}),
        reference_rows=pl.DataFrame({C.USER: [E.SENTINEL_USER]}),
        settings=Settings(),
        n_shards=3,
    )


def echo(ctx: E.ShardContext, shard: int, users: pl.DataFrame) -> E.ShardResult:
    return E.ShardResult(shard=shard, users=users.height, rows=users.height * 5)


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

        def flaky(ctx: E.ShardContext, shard: int, users: pl.DataFrame) -> E.ShardResult:
            calls.append(shard)
            if shard == 1 and calls.count(1) <= failures:
                msg = "boom"
                raise RuntimeError(msg)
            return echo(ctx, shard, users)

        executor = E.LocalExecutor(retries=retries)
        if ok:
            assert len(executor.map_shards(flaky, context(), shards(3))) == 3
            assert calls.count(1) == failures + 1
        else:
            with pytest.raises(E.ShardError, match=r"shard 1 failed after 2 attempt\(s\).*boom"):
                executor.map_shards(flaky, context(), shards(3))
            assert 2 not in calls  # the run stops at the first shard that keeps failing


def test_make_executor_follows_the_config() -> None:
    local = E.make_executor(Settings())
    assert isinstance(local, E.LocalExecutor)
    settings = Settings(scale={"executor": "dask", "scheduler_address": "tcp://h:8786"})
    remote = E.make_executor(settings)
    assert isinstance(remote, E.DaskExecutor)
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
    ref = E.reference_rows(tx, as_of_week=5)
    assert ref.height == 1
    assert ref.row(0, named=True)[C.DAY] == 20
    assert ref[C.USER].to_list() == [E.SENTINEL_USER]


def test_a_failed_shard_exits_like_a_failed_publish() -> None:
    assert E.ShardError("shard 3 failed").exit_code == 4


def test_a_data_error_in_a_shard_is_not_retried_and_keeps_its_exit_code() -> None:
    from recsys_batch.errors import EmptyStageError  # noqa: PLC0415

    calls: list[int] = []

    def empty(ctx: E.ShardContext, shard: int, users: pl.DataFrame) -> E.ShardResult:
        calls.append(shard)
        msg = "no candidates"
        raise EmptyStageError(msg)

    with pytest.raises(EmptyStageError) as caught:
        E.LocalExecutor(retries=3).map_shards(empty, context(), shards(2))
    assert caught.value.exit_code == 2
    assert calls == [0]


def test_partitioned_transactions_match_the_filter() -> None:
    ctx = context()
    tx = pl.DataFrame({C.USER: list(range(40)), C.ITEM: list(range(40))})
    ctx.partitions = E.partition_transactions(tx, 3)
    ctx.transactions = tx
    for s in range(3):
        by_partition = ctx.shard_transactions(s)
        ctx.partitions, saved = None, ctx.partitions
        assert by_partition.equals(ctx.shard_transactions(s))
        ctx.partitions = saved
    assert ctx.partitions is not None
    assert ctx.partitions[-1].height == 0
    assert ctx.partitions[-1].columns == [C.USER, C.ITEM]
