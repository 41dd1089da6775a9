"""The item family of the stage-2 features: popularity, trend, price, reach (``i_*``).

Computed over every user's purchases: in one query for a run in memory, in parts of whole
items for an out-of-core run (:func:`item_table_in_parts`), where one pass over every line
would hold each item's buyers and prices at once (6.4 GB at 100x).
"""

from __future__ import annotations

import polars as pl

from recsys_batch.config import FeaturesConfig
from recsys_batch.data import columns as C
from recsys_batch.model.ids import distinct_count, item_part
from recsys_batch.model.point_in_time import (
    COUPONED,
    DISCOUNTED,
    PLACEHOLDER,
    PRICE,
    REF_DAY,
    before_cut,
    prepared,
)

# The ranker's feature order of the item family; kept as it always was.
ITEM_FEATURES = (
    "i_baskets",
    "i_buyers",
    "i_recent_buyers",
    "i_previous_buyers",
    "i_quantity",
    "i_price",
    "i_discount_share",
    "i_coupon_share",
    "i_stores",
    "i_weeks_sold",
    "i_days_since_sold",
    "i_repeat_buyer_share",
    "i_baskets_per_buyer",
    "i_user_share",
    "i_trend",
)


def item_buyer_counts(lines: pl.LazyFrame, recent: pl.Expr, previous: pl.Expr) -> pl.LazyFrame:
    """Per item: baskets, buyers, recent/previous-window buyers and repeat-buyer share.

    One (item, user) group-by: a basket belongs to one user, so the item's distinct baskets
    are the sum of its buyers' distinct baskets. Per-item distinct counts of users and
    baskets over every line would cost a hash set each on the biggest frame.
    """
    return (
        lines.group_by(C.ITEM, C.USER)
        .agg(
            pl.col(C.BASKET).n_unique().alias("_n"),
            recent.any().alias("_recent"),
            previous.any().alias("_previous"),
        )
        .group_by(C.ITEM)
        .agg(
            pl.col("_n").sum().cast(pl.UInt32).alias("i_baskets"),
            pl.len().cast(pl.UInt32).alias("i_buyers"),
            pl.col("_recent").sum().cast(pl.UInt32).alias("i_recent_buyers"),
            pl.col("_previous").sum().cast(pl.UInt32).alias("i_previous_buyers"),
            (pl.col("_n") >= 2).mean().alias("i_repeat_buyer_share"),
            pl.col("_n").mean().alias("i_baskets_per_buyer"),
        )
    )


def item_totals(
    transactions: pl.LazyFrame, as_of_week: int, *, placeholder_item: int = PLACEHOLDER
) -> pl.LazyFrame:
    """One row over every line before the cut: users with a catalogue purchase
    (``_all_users``) and the reference day."""
    tx = prepared(transactions, as_of_week).filter(pl.col(C.ITEM) != placeholder_item)
    n_users = distinct_count(tx, C.USER, "_all_users")
    # A one-row frame, not prepared's broadcast column: a whole-frame max broadcast to every
    # line makes the streaming engine hold all the lines until the max is known.
    reference_day = before_cut(transactions, as_of_week).select(
        (pl.col(C.DAY).max() + 1).alias(REF_DAY)
    )
    return n_users.join(reference_day, how="cross")


def item_features(
    transactions: pl.LazyFrame,
    as_of_week: int,
    cfg: FeaturesConfig,
    *,
    placeholder_item: int = PLACEHOLDER,
    only_items: pl.Expr | None = None,
    totals: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """One row per item: popularity and its trend, price, discount share, stores, weeks sold.

    Columns are prefixed ``i_``. ``only_items``: a condition on ``item_id`` (such as
    :func:`recsys_batch.model.ids.item_part`) restricting the rows to those items;
    ``totals``: :func:`item_totals` of every line, when computed already.
    """
    ph = {"placeholder_item": placeholder_item}
    tx = prepared(transactions, as_of_week).filter(pl.col(C.ITEM) != placeholder_item)
    grouped = tx if only_items is None else tx.filter(only_items)
    totals = item_totals(transactions, as_of_week, **ph) if totals is None else totals
    recent = pl.col(C.WEEK) >= as_of_week - cfg.recent_weeks
    previous = pl.col(C.WEEK).is_between(
        as_of_week - 2 * cfg.recent_weeks, as_of_week - cfg.recent_weeks, closed="left"
    )
    return (
        grouped.group_by(C.ITEM)
        .agg(
            pl.col(C.QTY).sum().alias("i_quantity"),
            pl.col(PRICE).median().alias("i_price"),
            pl.col(DISCOUNTED).mean().alias("i_discount_share"),
            pl.col(COUPONED).mean().alias("i_coupon_share"),
            pl.col(C.STORE).n_unique().alias("i_stores"),
            pl.col(C.WEEK).n_unique().alias("i_weeks_sold"),
            pl.col(C.DAY).max().alias("_last_day"),
        )
        .join(item_buyer_counts(grouped, recent, previous), on=C.ITEM, how="left")
        .join(totals, how="cross")
        .with_columns(
            (pl.col(REF_DAY) - pl.col("_last_day")).alias("i_days_since_sold"),
            (pl.col("i_buyers") / pl.col("_all_users")).alias("i_user_share"),
            ((pl.col("i_recent_buyers") + 1) / (pl.col("i_previous_buyers") + 1)).alias("i_trend"),
        )
        .select(C.ITEM, *ITEM_FEATURES)
    )


def item_table_in_parts(
    transactions: pl.LazyFrame,
    as_of_week: int,
    cfg: FeaturesConfig,
    n_parts: int,
    *,
    placeholder_item: int = PLACEHOLDER,
) -> pl.DataFrame:
    """:func:`item_features` collected by the streaming engine in ``n_parts`` parts of
    whole items: the rows of one query, sorted by item.

    Common sub-plan elimination is off: each branch scans the lines itself, whereas a
    shared (cached) scan would buffer every line in memory.
    """
    no_cache = pl.QueryOptFlags(comm_subplan_elim=False)
    totals = item_totals(transactions, as_of_week, placeholder_item=placeholder_item)
    totals_row = totals.collect(engine="streaming", optimizations=no_cache).lazy()
    parts = [
        item_features(
            transactions,
            as_of_week,
            cfg,
            placeholder_item=placeholder_item,
            only_items=item_part(n_parts, part) if n_parts > 1 else None,
            totals=totals_row,
        ).collect(engine="streaming", optimizations=no_cache)
        for part in range(max(n_parts, 1))
    ]
    return pl.concat(parts).sort(C.ITEM)
