"""The driver's per-shard computations equal the one query over every line (issue #28).

Out of core the driver reads the shard files one at a time: the popular list, the shards'
users and the sentinel row must be exactly what the query over all lines gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.model.two_stage import popular_fallback
from recsys_batch.run import dask_executor as D
from recsys_batch.run import driver_tables, shard_context, sharding
from recsys_batch.run import executors as E
from recsys_batch.run import shard_task as T


def lines(n: int = 4_000, users: int = 300, items: int = 40, seed: int = 3) -> pl.DataFrame:
    """Random purchases; many users buy an item several times (buyers != lines)."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            C.USER: rng.integers(1, users + 1, n).astype(np.int64),
            C.ITEM: rng.integers(1, items + 1, n).astype(np.int64),
            C.BASKET: rng.integers(1, 2_000, n).astype(np.int64),
            C.DAY: rng.integers(1, 100, n).astype(np.int32),
        }
    )


def user_parts(tx: pl.DataFrame, n: int) -> list[pl.LazyFrame]:
    return [tx.lazy().filter(sharding.shard_of(n) == s) for s in range(n)]


@pytest.mark.parametrize("n_parts", [1, 2, 7])
def test_popular_by_parts_equals_popular_fallback(n_parts: int) -> None:
    """Mutation caught: counting lines instead of buyers, or taking one part's counts (the
    parts' buyers not summed) changes the order of the top items."""
    tx = lines()
    catalogue = pl.LazyFrame({C.ITEM: list(range(1, 41, 2))})  # odd items only
    expected = popular_fallback(tx.lazy(), catalogue, 12)
    assert driver_tables.popular_by_parts(user_parts(tx, n_parts), catalogue, 12) == expected
    assert all(item % 2 for item in expected)


def test_popular_by_parts_ties_go_to_the_lower_id() -> None:
    """Mutation caught: a sort without the item id as second key (an arbitrary tie order)."""
    tx = pl.DataFrame({C.USER: [1, 2, 3, 4], C.ITEM: [9, 5, 9, 5]})
    catalogue = pl.LazyFrame({C.ITEM: [5, 9]})
    assert driver_tables.popular_by_parts(user_parts(tx, 3), catalogue, 2) == [5, 9]


def context(tx: pl.DataFrame, n_shards: int, shards_dir: Path | None) -> T.ShardContext:
    return T.ShardContext(
        model=None,
        catalogue_items=pl.DataFrame({C.ITEM: [1]}),
        item_table=pl.DataFrame({C.ITEM: [1]}),
        reference_rows=pl.DataFrame({C.USER: [T.SENTINEL_USER]}),
        settings=Settings(),
        n_shards=n_shards,
        partitions=None if shards_dir else shard_context.partition_transactions(tx, n_shards),
        shards_dir=shards_dir,
    )


@pytest.mark.parametrize("on_disk", [False, True])
def test_context_shards_equal_the_plan_of_every_user(on_disk: bool, tmp_path: Path) -> None:
    """Each shard's users read from its own rows are the plan of the list of every user,
    shard for shard, empty shards left out. Mutation caught: a shard's users not unique or
    not sorted, an empty shard kept, or the shard read from another shard's rows."""
    tx = lines(n=300, users=40)
    n_shards = 64  # more shards than users: some are empty
    shards_dir = tmp_path / "shards" if on_disk else None
    if shards_dir is not None:
        sharding.write_shards(tx.lazy(), n_shards, shards_dir)
    planned = E.ContextShards(context(tx, n_shards, shards_dir))
    expected = E.plan_shards(tx.lazy().select(C.USER), n_shards)
    assert len(planned) == len(expected) < n_shards
    for (shard, users), (want_shard, want_users) in zip(planned, expected, strict=True):
        assert shard == want_shard
        assert_frame_equal(users, want_users)
    assert [shard for shard, _ in planned[1:3]] == [planned[1][0], planned[2][0]]


@pytest.mark.parametrize("version", [None, "v1"])
def test_a_workers_recommendations_are_written_not_kept(
    version: str | None, tmp_path: Path
) -> None:
    """With an output folder the driver writes a Dask worker's recommendations there and
    drops them (it would otherwise hold every customer's list in a dry run). Mutation
    caught: keeping them when not publishing, or not writing the file."""
    recs = pl.DataFrame({C.USER: [1, 1], C.ITEM: [5, 6], C.RANK: [1, 2]})
    ctx = context(lines(n=10), 1, None)
    ctx.output_dir, ctx.version = tmp_path / "recs", version
    saved = D._saved(T.ShardResult(3, 1, 2, recommendations=recs), ctx)
    assert saved.recommendations is None
    assert_frame_equal(pl.read_parquet(tmp_path / "recs" / "shard=00003.parquet"), recs)
    ctx.output_dir = None  # nowhere else to go: kept for the caller when not publishing
    kept = D._saved(T.ShardResult(3, 1, 2, recommendations=recs), ctx)
    assert (kept.recommendations is None) == (version is not None)


def test_shard_files_have_small_row_groups(tmp_path: Path) -> None:
    """The partitioned sink holds one open row group per shard: row groups of at most
    ``SHARD_ROW_GROUP`` rows keep its memory small however many shards (customers) there
    are. Mutation caught: the sink's default row groups (one group of every row here)."""
    tx = lines(n=3 * sharding.SHARD_ROW_GROUP, users=50)
    sharding.write_shards(tx.lazy(), 1, tmp_path)
    (file,) = (tmp_path / "shard=00000").glob("*.parquet")
    meta = pq.ParquetFile(file).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == tx.height
    assert max(sizes) <= sharding.SHARD_ROW_GROUP
