"""Stage-2 features of a user and an item together, as of the cut (issue #4).

User x item: repurchase history and timing (usual interval, how overdue the item is, in
days and in the user's shopping visits) and the historical hit rate of a target window.
User x item group: the share and recency of the user's purchases in a department, category
or sub-category. Columns are prefixed ``ui_`` and by the group family's prefix.
"""

from __future__ import annotations

import polars as pl

from recsys_batch.config import FeaturesConfig
from recsys_batch.data import columns as C
from recsys_batch.model.point_in_time import DISCOUNTED, PLACEHOLDER, REF_DAY, before_cut, prepared


def shopping_visits(lines: pl.LazyFrame) -> pl.LazyFrame:
    """The user's shopping days numbered 1..n: ``user_id, day, _visit, _visits``.

    Timing in visits, not just in days, so an irregular shopper is not "overdue" just
    because they did not come to the store.
    """
    return (
        lines.select(C.USER, C.DAY)
        .unique()
        .with_columns(
            pl.col(C.DAY).rank("dense").over(C.USER).cast(pl.Int32).alias("_visit"),
            pl.col(C.DAY).n_unique().over(C.USER).cast(pl.Int32).alias("_visits"),
        )
    )


def purchase_history(lines: pl.LazyFrame, as_of_week: int, cfg: FeaturesConfig) -> pl.LazyFrame:
    """Per (user, item) of ``lines`` (:func:`prepared`): counts, spend, recency, interval.

    Also ``_first_day``, ``_last_day`` and ``_weeks_since_first`` for the timing ratios.
    """
    recent = pl.col(C.WEEK) >= as_of_week - cfg.recent_weeks
    decay = (
        (pl.col(REF_DAY) - pl.col(C.DAY)).cast(pl.Float64)
        * (-0.6931471805599453 / cfg.half_life_days)
    ).exp()
    days = pl.col(C.DAY)
    n_days = days.n_unique()
    span = days.max() - days.min()
    return (
        lines.with_columns(decay.alias("_w"))
        .group_by(C.USER, C.ITEM)
        .agg(
            pl.col(C.BASKET).n_unique().alias("ui_baskets"),
            n_days.alias("ui_days"),
            pl.col(C.WEEK).n_unique().alias("ui_weeks"),
            pl.col(C.WEEK).filter(recent).n_unique().alias("ui_recent_weeks"),
            pl.col(C.WEEK)
            .filter(pl.col(C.WEEK) >= as_of_week - 2 * cfg.recent_weeks)
            .n_unique()
            .alias("ui_recent2_weeks"),
            pl.col(C.WEEK)
            .filter(pl.col(C.WEEK) >= as_of_week - 4 * cfg.recent_weeks)
            .n_unique()
            .alias("ui_recent4_weeks"),
            (as_of_week - pl.col(C.WEEK).min()).alias("_weeks_since_first"),
            pl.col(C.QTY).sum().alias("ui_quantity"),
            pl.col(C.SALES).sum().alias("ui_spend"),
            pl.col("_w").sum().alias("ui_recency_weighted"),
            (pl.col(REF_DAY).first() - days.max()).alias("ui_days_since"),
            (pl.col(REF_DAY).first() - days.min()).alias("ui_days_since_first"),
            pl.when(n_days > 1).then(span / (n_days - 1)).otherwise(None).alias("ui_interval"),
            pl.col(DISCOUNTED).mean().alias("ui_discount_share"),
            days.min().alias("_first_day"),
            days.max().alias("_last_day"),
        )
    )


def with_timing_ratios(history: pl.LazyFrame) -> pl.LazyFrame:
    """``history`` (joined with user totals and first/last visits) plus shares and ratios."""
    return (
        history.with_columns(
            (pl.col("ui_days_since") / pl.col("ui_interval")).alias("ui_overdue"),
            (pl.col("ui_days_since") - pl.col("ui_interval")).alias("ui_days_overdue"),
            (pl.col("ui_baskets") / pl.col("_user_baskets")).alias("ui_basket_share"),
            (pl.col("ui_spend") / pl.col("_user_spend")).alias("ui_spend_share"),
            # Purchase rate per day since the first purchase: how often, not just how many.
            (pl.col("ui_days") / pl.col("ui_days_since_first").clip(1, None)).alias("ui_rate"),
            (pl.col("_visits") - pl.col("_v1")).alias("ui_visits_since"),
            # Share of the weeks since the first purchase in which the item was bought.
            (pl.col("ui_weeks") / pl.col("_weeks_since_first")).alias("ui_week_share"),
            (pl.col("ui_days") / (pl.col("_visits") - pl.col("_v0") + 1)).alias("ui_visit_rate"),
            pl.when(pl.col("ui_days") > 1)
            .then((pl.col("_v1") - pl.col("_v0")) / (pl.col("ui_days") - 1))
            .otherwise(None)
            .alias("ui_visit_interval"),
        )
        .with_columns(
            (pl.col("ui_visits_since") / pl.col("ui_visit_interval")).alias("ui_visit_overdue")
        )
        .drop(
            "_user_baskets",
            "_user_spend",
            "_first_day",
            "_last_day",
            "_v0",
            "_v1",
            "_visits",
            "_weeks_since_first",
        )
    )


def user_item_features(
    transactions: pl.LazyFrame,
    as_of_week: int,
    cfg: FeaturesConfig,
    *,
    placeholder_item: int = PLACEHOLDER,
) -> pl.LazyFrame:
    """One row per (user, item) bought before the cut: repurchase history and timing.

    ``ui_interval`` is the user's usual number of days between purchases of the item,
    ``ui_overdue`` the days since the last purchase divided by that interval (1 = due now).
    Columns are prefixed ``ui_``.
    """
    everything = prepared(transactions, as_of_week)
    tx = everything.filter(pl.col(C.ITEM) != placeholder_item)
    visits = shopping_visits(everything)
    user_baskets = tx.group_by(C.USER).agg(
        pl.col(C.BASKET).n_unique().alias("_user_baskets"),
        pl.col(C.SALES).sum().alias("_user_spend"),
    )
    first_visit = visits.select(
        C.USER, pl.col(C.DAY).alias("_first_day"), pl.col("_visit").alias("_v0")
    )
    last_visit = visits.select(
        C.USER, pl.col(C.DAY).alias("_last_day"), pl.col("_visit").alias("_v1"), "_visits"
    )
    history = (
        purchase_history(tx, as_of_week, cfg)
        .join(user_baskets, on=C.USER, how="left")
        .join(first_visit, on=[C.USER, "_first_day"], how="left")
        .join(last_visit, on=[C.USER, "_last_day"], how="left")
    )
    return with_timing_ratios(history)


def window_hit_rate(
    transactions: pl.LazyFrame,
    as_of_week: int,
    horizon_weeks: int,
    cfg: FeaturesConfig,
    *,
    placeholder_item: int = PLACEHOLDER,
) -> pl.LazyFrame:
    """Per (user, item): share of past ``horizon_weeks``-week windows holding a purchase.

    A window starts at every week from the user's first week before the cut up to
    ``as_of_week - horizon_weeks``; this is the item's historical hit rate for a target
    window of that length (column ``ui_hit_rate_{horizon_weeks}w``), the quantity the
    ranker predicts, measured on the user's own past.
    """
    tx = before_cut(transactions, as_of_week)
    name = f"ui_hit_rate_{horizon_weeks}w"
    first = tx.group_by(C.USER).agg(pl.col(C.WEEK).min().alias("_first_week"))
    last_start = as_of_week - horizon_weeks
    # A purchase in week w hits the windows starting in w - horizon + 1 .. w: the hits are
    # the length of the union of those ranges over the (user, item)'s distinct weeks,
    # clipped to [first week, last start]. In week order, each week adds the part of its
    # range after the previous week (ranges of equal length), a sum instead of one row per
    # window start.
    same_pair = (pl.col(C.USER) == pl.col(C.USER).shift(1)) & (
        pl.col(C.ITEM) == pl.col(C.ITEM).shift(1)
    )
    after_previous = pl.when(same_pair).then(pl.col(C.WEEK).shift(1) + 1)
    start = pl.max_horizontal(
        pl.col(C.WEEK) - horizon_weeks + 1, pl.col("_first_week"), after_previous
    )
    end = pl.min_horizontal(pl.col(C.WEEK), pl.lit(last_start))
    hits = (
        tx.filter(pl.col(C.ITEM) != placeholder_item)
        .select(C.USER, C.ITEM, C.WEEK)
        .unique()
        .join(first, on=C.USER)
        .filter(pl.col("_first_week") <= last_start)
        .sort(C.USER, C.ITEM, C.WEEK)
        .with_columns((end - start + 1).clip(0, None).alias("_new"))
        .group_by(C.USER, C.ITEM)
        .agg(pl.col("_new").sum().alias("_hits"), pl.col("_first_week").first())
    )
    return hits.select(
        C.USER,
        C.ITEM,
        (pl.col("_hits") / (last_start - pl.col("_first_week") + 1).clip(1, None)).alias(name),
    )


def user_group_features(
    transactions: pl.LazyFrame,
    items: pl.LazyFrame,
    as_of_week: int,
    group: str,
    prefix: str,
    cfg: FeaturesConfig,
    *,
    placeholder_item: int = PLACEHOLDER,
) -> pl.LazyFrame:
    """One row per (user, ``group`` value): share of the user's purchases and recency.

    ``group`` is an item attribute such as ``department`` or ``category``; purchases of the
    placeholder item have no attribute and are not counted.
    """
    tx = prepared(transactions, as_of_week).filter(pl.col(C.ITEM) != placeholder_item)
    attr = items.select(C.ITEM, group).unique(subset=C.ITEM)
    lines = tx.join(attr, on=C.ITEM, how="inner").filter(pl.col(group).is_not_null())
    totals = lines.group_by(C.USER).agg(
        pl.len().alias("_lines"), pl.col(C.BASKET).n_unique().alias("_baskets")
    )
    return (
        lines.group_by(C.USER, group)
        .agg(
            pl.len().alias("_group_lines"),
            pl.col(C.BASKET).n_unique().alias(f"{prefix}_baskets"),
            (pl.col(REF_DAY).first() - pl.col(C.DAY).max()).alias(f"{prefix}_days_since"),
            pl.col(C.ITEM).n_unique().alias(f"{prefix}_items"),
            pl.col(C.DAY).n_unique().alias(f"{prefix}_days"),
            pl.when(pl.col(C.DAY).n_unique() > 1)
            .then((pl.col(C.DAY).max() - pl.col(C.DAY).min()) / (pl.col(C.DAY).n_unique() - 1))
            .otherwise(None)
            .alias(f"{prefix}_interval"),
        )
        .join(totals, on=C.USER)
        .with_columns(
            (pl.col("_group_lines") / pl.col("_lines")).alias(f"{prefix}_share"),
            (pl.col(f"{prefix}_baskets") / pl.col("_baskets")).alias(f"{prefix}_basket_share"),
            (pl.col(f"{prefix}_days_since") / pl.col(f"{prefix}_interval")).alias(
                f"{prefix}_overdue"
            ),
        )
        .drop("_group_lines", "_lines", "_baskets")
    )
