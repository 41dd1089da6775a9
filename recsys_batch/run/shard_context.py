"""What every shard shares, built once on the driver: :func:`build_context`.

Features of a user depend on that user's purchases only, except the item features
(popularity over all users) and the reference day (the newest purchase before the cut), so
the driver computes those over every user's rows (:func:`global_item_table`,
:func:`reference_rows`), together with the small side tables, the new-item families and, when
the transactions are in memory, their split by shard (:func:`partition_transactions`). The
shard task itself is :func:`recsys_batch.run.shard_task.run_shard`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.model import features, split
from recsys_batch.model.item_features import item_table_by_parts
from recsys_batch.model.point_in_time import before_cut
from recsys_batch.run import sharding
from recsys_batch.run.shard_task import SENTINEL_USER, ShardContext

if TYPE_CHECKING:
    from recsys_batch.model.two_stage import ModelData


def build_context(
    model: Any,
    data: ModelData,
    settings: Settings,
    n_shards: int,
    *,
    shards_dir: sharding.Location | None = None,
) -> ShardContext:
    """Everything the shards share: item features, reference day, catalogue, small tables
    and the feature families computed from them.

    ``data`` is the run's ``two_stage.ModelData``; its transactions are kept in memory
    unless ``shards_dir`` holds them already split by :func:`sharding.write_shards`.
    """
    from recsys_batch.model import two_stage  # noqa: PLC0415 - heavy (lightgbm, implicit)

    cut = model.windows.target_end
    tx = split.before_test(data.transactions, model.windows)
    catalogue, items, users = data.catalogue, data.items, data.users
    placeholder = settings.prefilter.placeholder_item
    parts = (
        [tx]
        if shards_dir is None
        else [
            split.before_test(sharding.scan_shard(shards_dir, s), model.windows)
            for s in range(n_shards)
        ]
    )
    return ShardContext(
        model=model,
        catalogue_items=catalogue.select(C.ITEM)
        .filter(pl.col(C.ITEM) != placeholder)
        .unique()
        .collect(),
        item_table=global_item_table(parts, cut, settings),
        reference_rows=reference_rows(tx, cut),
        settings=settings,
        n_shards=n_shards,
        side_tables=side_tables(items, users, settings),
        items=items.collect() if items is not None else None,
        users=users.collect() if users is not None else None,
        plans=two_stage.scoring_data(model, data).plans,
        first_buyers=new_item_families(parts, cut, settings),
        partitions=None
        if shards_dir is not None
        else partition_transactions(tx.collect(), n_shards),
        shards_dir=shards_dir,
    )


def new_item_families(
    parts: list[pl.LazyFrame], cut: int, settings: Settings
) -> pl.DataFrame | None:
    """The item first-buyer family over every user (the parts of whole users read one at a
    time) when the run publishes a new-items list, else None."""
    if settings.publish.new_items <= 0:
        return None
    from recsys_batch.model.new_items_ranking import first_buyer_items  # noqa: PLC0415

    recent = settings.features.recent_weeks
    return first_buyer_items(parts, cut, recent, settings.prefilter.placeholder_item)


def partition_transactions(tx: pl.DataFrame, n_shards: int) -> dict[int, pl.DataFrame]:
    """Rows of each shard, split in one pass (key -1: an empty frame with the schema)."""
    if n_shards == 1:  # every row is in shard 0, in order: no hash and no copy of the lines
        return {**({0: tx} if tx.height else {}), -1: tx.clear()}
    parts = tx.with_columns(sharding.shard_of(n_shards)).partition_by(
        sharding.SHARD, as_dict=True, include_key=False
    )
    split_parts = {int(key[0]): part for key, part in parts.items()}
    split_parts[-1] = tx.clear()
    return split_parts


def global_item_table(
    parts: list[pl.LazyFrame], as_of_week: int, settings: Settings
) -> pl.DataFrame:
    """Item features over every user's purchases before ``as_of_week`` (driver, once), from
    ``parts`` of whole users read one at a time (the shard files: each line is read once and
    only small per-item partials are held)."""
    return item_table_by_parts(
        parts,
        as_of_week,
        settings.features,
        placeholder_item=settings.prefilter.placeholder_item,
    )


def side_tables(
    items: pl.LazyFrame | None, users: pl.LazyFrame | None, settings: Settings
) -> dict[str, pl.DataFrame]:
    """The feature families of the item and user tables (driver, once; small)."""
    plans = features.side_tables(items, users, settings.features)
    return dict(zip(plans, pl.collect_all(list(plans.values())), strict=True))


def reference_rows(tx: pl.LazyFrame, as_of_week: int) -> pl.DataFrame:
    """One purchase of the newest day before the cut, relabelled to :data:`SENTINEL_USER`."""
    # Streaming, like every driver query over all the shard files (#28): its memory is
    # bounded by the engine, not by the lines (61 MiB at 40x, as the default engine today).
    return (
        before_cut(tx, as_of_week)
        .top_k(1, by=[C.DAY, C.USER, C.BASKET, C.ITEM])
        .with_columns(pl.lit(SENTINEL_USER, dtype=pl.Int64).alias(C.USER))
        .collect(engine="streaming")
    )
