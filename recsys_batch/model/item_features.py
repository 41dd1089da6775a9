"""The item family of the stage-2 features: popularity, trend, price, reach (``i_*``).

Computed over every user's purchases as mergeable partial aggregates (:class:`ItemPartials`):
in one query for a run in memory; out of core, one part of whole users (a shard's file) at a
time (:func:`item_table_by_parts`), since one pass over every line would hold each item's
buyers and prices at once (6.4 GB at 100x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from recsys_batch.config import FeaturesConfig
from recsys_batch.data import columns as C
from recsys_batch.data.frames import distinct_count
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
    """Per item: summed baskets, buyers, recent/previous-window buyers and repeat buyers.

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
            pl.col("_n").sum().cast(pl.UInt64).alias("_baskets"),
            pl.len().cast(pl.UInt64).alias("_buyers"),
            pl.col("_recent").sum().cast(pl.UInt64).alias("_recent_buyers"),
            pl.col("_previous").sum().cast(pl.UInt64).alias("_previous_buyers"),
            (pl.col("_n") >= 2).sum().cast(pl.UInt64).alias("_repeat_buyers"),
        )
    )


@dataclass(frozen=True)
class ItemPartials:
    """Mergeable aggregates of the item features over one part of whole users.

    Users are disjoint between parts, so counts of buyers add up; distinct stores and
    weeks, and the unit prices with their line counts (for the exact median), are kept as
    sets. Merging parts and then finishing (:func:`item_table`) gives the same table as one
    query over all of them.
    """

    sums: pl.LazyFrame
    """Per item: additive counts and sums, and the newest day sold."""
    stores: pl.LazyFrame
    """Distinct (item, store)."""
    weeks: pl.LazyFrame
    """Distinct (item, week)."""
    prices: pl.LazyFrame
    """(item, unit price, lines at that price)."""
    totals: pl.LazyFrame
    """One row: users with a catalogue purchase, newest day before the cut."""

    def frames(self) -> list[pl.LazyFrame]:
        return [self.sums, self.stores, self.weeks, self.prices, self.totals]

    @classmethod
    def of(cls, frames: Sequence[pl.LazyFrame | pl.DataFrame]) -> ItemPartials:
        return cls(*(frame.lazy() for frame in frames))


def item_partials(
    transactions: pl.LazyFrame,
    as_of_week: int,
    cfg: FeaturesConfig,
    *,
    placeholder_item: int = PLACEHOLDER,
) -> ItemPartials:
    """The :class:`ItemPartials` of ``transactions`` (whole users) as of ``as_of_week``."""
    tx = prepared(transactions, as_of_week).filter(pl.col(C.ITEM) != placeholder_item)
    recent = pl.col(C.WEEK) >= as_of_week - cfg.recent_weeks
    previous = pl.col(C.WEEK).is_between(
        as_of_week - 2 * cfg.recent_weeks, as_of_week - cfg.recent_weeks, closed="left"
    )
    sums = (
        tx.group_by(C.ITEM)
        .agg(
            pl.col(C.QTY).sum().alias("i_quantity"),
            pl.len().cast(pl.UInt64).alias("_lines"),
            pl.col(DISCOUNTED).sum().cast(pl.UInt64).alias("_discounted"),
            pl.col(COUPONED).sum().cast(pl.UInt64).alias("_couponed"),
            pl.col(C.DAY).max().alias("_last_day"),
        )
        .join(item_buyer_counts(tx, recent, previous), on=C.ITEM, how="left")
        .select(pl.exclude("_last_day"), "_last_day")  # the order merged() gives
    )
    # A one-row frame, not prepared's broadcast column: a whole-frame max broadcast to every
    # line makes the streaming engine hold all the lines until the max is known.
    reference_day = before_cut(transactions, as_of_week).select(
        (pl.col(C.DAY).max() + 1).alias(REF_DAY)
    )
    return ItemPartials(
        sums=sums,
        stores=tx.select(C.ITEM, C.STORE).unique(),
        weeks=tx.select(C.ITEM, C.WEEK).unique(),
        prices=tx.filter(pl.col(PRICE).is_not_null())
        .group_by(C.ITEM, PRICE)
        .agg(pl.len().cast(pl.UInt64).alias("_n")),
        totals=distinct_count(tx, C.USER, "_all_users").join(reference_day, how="cross"),
    )


def merged(parts: Sequence[ItemPartials]) -> ItemPartials:
    """The partials of the union of ``parts`` (each of whole users, no user in two)."""
    if len(parts) == 1:  # already one row per key: re-aggregating would change nothing
        return parts[0]
    sums = pl.concat([p.sums for p in parts]).group_by(C.ITEM)
    return ItemPartials(
        sums=sums.agg(pl.exclude("_last_day").sum(), pl.col("_last_day").max()),
        stores=pl.concat([p.stores for p in parts]).unique(),
        weeks=pl.concat([p.weeks for p in parts]).unique(),
        prices=pl.concat([p.prices for p in parts]).group_by(C.ITEM, PRICE).agg(pl.col("_n").sum()),
        totals=pl.concat([p.totals for p in parts]).select(
            pl.col("_all_users").sum(), pl.col(REF_DAY).max()
        ),
    )


def median_price(prices: pl.LazyFrame) -> pl.LazyFrame:
    """Per item, the median unit price of its lines from (price, lines) counts.

    As Polars' ``median`` computes it: the two middle values ``a`` and ``b`` of the sorted
    lines (the same for an odd count), ``a + (b - a) * 0.5``.
    """
    ranked = prices.sort(C.ITEM, PRICE).with_columns(
        pl.col("_n").cum_sum().over(C.ITEM).alias("_through"),
        pl.col("_n").sum().over(C.ITEM).alias("_lines"),
    )
    low = (pl.col("_lines") - 1) // 2
    high = pl.col("_lines") // 2
    return (
        ranked.group_by(C.ITEM)
        .agg(
            pl.col(PRICE).filter(pl.col("_through") > low).min().alias("_low"),
            pl.col(PRICE).filter(pl.col("_through") > high).min().alias("_high"),
        )
        .select(
            C.ITEM, (pl.col("_low") + (pl.col("_high") - pl.col("_low")) * 0.5).alias("i_price")
        )
    )


def item_table(partials: ItemPartials) -> pl.LazyFrame:
    """The item features (``ITEM_FEATURES``, one row per item) from merged partials."""
    stores = partials.stores.group_by(C.ITEM).agg(pl.len().cast(pl.UInt32).alias("i_stores"))
    weeks = partials.weeks.group_by(C.ITEM).agg(pl.len().cast(pl.UInt32).alias("i_weeks_sold"))
    buyers = pl.col("_buyers").cast(pl.Float64)
    return (
        partials.sums.join(median_price(partials.prices), on=C.ITEM, how="left")
        .join(stores, on=C.ITEM, how="left")
        .join(weeks, on=C.ITEM, how="left")
        .join(partials.totals, how="cross")
        .with_columns(
            pl.col("_baskets").cast(pl.UInt32).alias("i_baskets"),
            pl.col("_buyers").cast(pl.UInt32).alias("i_buyers"),
            pl.col("_recent_buyers").cast(pl.UInt32).alias("i_recent_buyers"),
            pl.col("_previous_buyers").cast(pl.UInt32).alias("i_previous_buyers"),
            (pl.col("_discounted").cast(pl.Float64) / pl.col("_lines")).alias("i_discount_share"),
            (pl.col("_couponed").cast(pl.Float64) / pl.col("_lines")).alias("i_coupon_share"),
            (pl.col(REF_DAY) - pl.col("_last_day")).alias("i_days_since_sold"),
            (pl.col("_repeat_buyers").cast(pl.Float64) / buyers).alias("i_repeat_buyer_share"),
            (pl.col("_baskets").cast(pl.Float64) / buyers).alias("i_baskets_per_buyer"),
            (pl.col("_buyers") / pl.col("_all_users")).alias("i_user_share"),
            ((pl.col("_recent_buyers") + 1) / (pl.col("_previous_buyers") + 1)).alias("i_trend"),
        )
        .select(C.ITEM, *ITEM_FEATURES)
    )


def item_features(
    transactions: pl.LazyFrame,
    as_of_week: int,
    cfg: FeaturesConfig,
    *,
    placeholder_item: int = PLACEHOLDER,
) -> pl.LazyFrame:
    """One row per item: popularity and its trend, price, discount share, stores, weeks sold.

    Columns are prefixed ``i_``; the transactions are one part (:func:`item_table_by_parts`
    for many).
    """
    parts = [item_partials(transactions, as_of_week, cfg, placeholder_item=placeholder_item)]
    return item_table(merged(parts))


MERGE_EVERY = 8
"""Parts whose partials are held before they are merged (each merge re-reads the sets)."""


def item_table_by_parts(
    parts: Sequence[pl.LazyFrame],
    as_of_week: int,
    cfg: FeaturesConfig,
    *,
    placeholder_item: int = PLACEHOLDER,
) -> pl.DataFrame:
    """:func:`item_features` of the union of ``parts``, each of whole users (the shard
    files), read one part at a time: only the small partials are held, and every line is
    read once. Rows sorted by item.
    """
    if not parts:
        msg = "item_table_by_parts needs at least one part"
        raise ValueError(msg)
    held: list[ItemPartials] = []
    for number, part in enumerate(parts, start=1):
        plans = item_partials(part, as_of_week, cfg, placeholder_item=placeholder_item)
        held.append(ItemPartials.of(pl.collect_all(plans.frames())))
        if len(held) > MERGE_EVERY or number == len(parts):
            held = [ItemPartials.of(pl.collect_all(merged(held).frames()))]
    return item_table(held[0]).collect().sort(C.ITEM)
