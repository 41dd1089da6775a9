"""Stage-2 features: point-in-time Polars jobs joined onto the stage-1 candidates.

Every feature function takes the transactions and an ``as_of_week`` cut and looks only at
purchases with ``week < as_of_week`` (:func:`before_cut`); the reference day for recencies is
the day after the newest purchase before the cut. Changing anything on or after the cut
therefore changes no feature (tests/unit/test_features.py checks it).

Families (issue #4): user, item, user x item (repurchase timing: usual interval and how
overdue the item is), user x department, user x category and user x sub-category affinity,
stage-1 scores and ranks (already columns of the candidates), ALS dot product, product
attributes and demographics as LightGBM categoricals (missing is a value of its own: code 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from recsys_batch.config import FeaturesConfig, PrefilterConfig
from recsys_batch.data import columns as C

# Purchases of non-catalogue items carry ``settings.prefilter.placeholder_item``: they count
# for user totals but are never an item of their own here. Every function takes the configured
# id as ``placeholder_item``; this default is only for callers without a configuration.
PLACEHOLDER = PrefilterConfig().placeholder_item
_REF_DAY = "_ref_day"
_PRICE = "_unit_price"
_DISC = "_discounted"
_COUPON = "_couponed"

# User x item-group affinity families: (item attribute, column prefix).
GROUP_FAMILIES = ((C.DEPARTMENT, "ud"), (C.CATEGORY, "uc"), (C.SUB_CATEGORY, "us"))

# Product attributes and demographics encoded as integer categories for LightGBM.
USER_CATEGORICALS = C.DEMOGRAPHICS


def before_cut(transactions: pl.LazyFrame, as_of_week: int) -> pl.LazyFrame:
    """Purchases strictly before ``as_of_week``: all a feature may see (point in time)."""
    return transactions.filter(pl.col(C.WEEK) < as_of_week)


def _prepared(transactions: pl.LazyFrame, as_of_week: int) -> pl.LazyFrame:
    """Cut transactions with the reference day and per-row helper columns."""
    cut = before_cut(transactions, as_of_week)
    return cut.with_columns(
        (pl.col(C.DAY).max() + 1).alias(_REF_DAY),
        (pl.col(C.SALES) / pl.max_horizontal(pl.col(C.QTY), pl.lit(1))).alias(_PRICE),
        (pl.col(C.RETAIL_DISC).fill_null(0.0).abs() > 0).alias(_DISC),
        (
            (
                pl.col(C.COUPON_DISC).fill_null(0.0).abs()
                + pl.col(C.COUPON_MATCH_DISC).fill_null(0.0).abs()
            )
            > 0
        ).alias(_COUPON),
    )


def user_features(
    transactions: pl.LazyFrame,
    as_of_week: int,
    cfg: FeaturesConfig,
    *,
    placeholder_item: int = PLACEHOLDER,
) -> pl.LazyFrame:
    """One row per user: baskets, spend, visit interval, recency, discount use, basket size.

    Columns are prefixed ``u_``.
    """
    tx = _prepared(transactions, as_of_week)
    recent = pl.col(C.WEEK) >= as_of_week - cfg.recent_weeks
    baskets = tx.group_by(C.USER, C.BASKET).agg(
        pl.col(C.DAY).first().alias(C.DAY),
        pl.col(C.SALES).sum().alias("_basket_spend"),
        pl.len().alias("_basket_lines"),
        pl.col(C.WEEK).first().alias(C.WEEK),
        pl.col(_REF_DAY).first().alias(_REF_DAY),
    )
    per_basket = baskets.group_by(C.USER).agg(
        pl.len().alias("u_baskets"),
        pl.col("_basket_spend").mean().alias("u_basket_spend"),
        pl.col("_basket_lines").mean().alias("u_basket_lines"),
        pl.col(C.DAY).n_unique().alias("u_visit_days"),
        (
            (pl.col(C.DAY).max() - pl.col(C.DAY).min())
            / (pl.col(C.DAY).n_unique() - 1).clip(1, None)
        ).alias("u_visit_interval"),
        (pl.col(_REF_DAY).first() - pl.col(C.DAY).max()).alias("u_days_since_visit"),
        (pl.col(_REF_DAY).first() - pl.col(C.DAY).min()).alias("u_tenure_days"),
        recent.sum().alias("u_recent_baskets"),
    )
    per_line = tx.group_by(C.USER).agg(
        pl.col(C.SALES).sum().alias("u_spend"),
        pl.col(C.ITEM).n_unique().alias("u_distinct_items"),
        pl.col(_DISC).mean().alias("u_discount_share"),
        pl.col(_COUPON).mean().alias("u_coupon_share"),
        (pl.col(C.ITEM) == placeholder_item).mean().alias("u_placeholder_share"),
        pl.col(C.STORE).n_unique().alias("u_stores"),
    )
    return per_basket.join(per_line, on=C.USER, how="left").with_columns(
        (pl.col("u_baskets") / (pl.col("u_tenure_days") / 7.0).clip(1.0, None)).alias(
            "u_baskets_per_week"
        )
    )


def item_features(
    transactions: pl.LazyFrame,
    as_of_week: int,
    cfg: FeaturesConfig,
    *,
    placeholder_item: int = PLACEHOLDER,
) -> pl.LazyFrame:
    """One row per item: popularity and its trend, price, discount share, stores, weeks sold.

    Columns are prefixed ``i_``.
    """
    tx = _prepared(transactions, as_of_week).filter(pl.col(C.ITEM) != placeholder_item)
    recent = pl.col(C.WEEK) >= as_of_week - cfg.recent_weeks
    previous = pl.col(C.WEEK).is_between(
        as_of_week - 2 * cfg.recent_weeks, as_of_week - cfg.recent_weeks, closed="left"
    )
    n_users = tx.select(pl.col(C.USER).n_unique().alias("_all_users"))
    # A one-row frame, not _prepared's broadcast column: a whole-frame max broadcast to every
    # line makes the streaming engine hold all the lines until the max is known.
    reference_day = before_cut(transactions, as_of_week).select(
        (pl.col(C.DAY).max() + 1).alias(_REF_DAY)
    )
    # Buyer counts come from one (item, user) group-by: a basket belongs to one user, so the
    # item's distinct baskets are the sum of its buyers' distinct baskets. Per-item distinct
    # counts of users and baskets over every line cost a hash set each (GBs at 100x).
    per_buyer = (
        tx.group_by(C.ITEM, C.USER)
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
    return (
        tx.group_by(C.ITEM)
        .agg(
            pl.col(C.QTY).sum().alias("i_quantity"),
            pl.col(_PRICE).median().alias("i_price"),
            pl.col(_DISC).mean().alias("i_discount_share"),
            pl.col(_COUPON).mean().alias("i_coupon_share"),
            pl.col(C.STORE).n_unique().alias("i_stores"),
            pl.col(C.WEEK).n_unique().alias("i_weeks_sold"),
            pl.col(C.DAY).max().alias("_last_day"),
        )
        .join(per_buyer, on=C.ITEM, how="left")
        .join(n_users, how="cross")
        .join(reference_day, how="cross")
        .with_columns(
            (pl.col(_REF_DAY) - pl.col("_last_day")).alias("i_days_since_sold"),
            (pl.col("i_buyers") / pl.col("_all_users")).alias("i_user_share"),
            ((pl.col("i_recent_buyers") + 1) / (pl.col("i_previous_buyers") + 1)).alias("i_trend"),
        )
        # The column order is the ranker's feature order; kept as it always was.
        .select(
            C.ITEM,
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
    everything = _prepared(transactions, as_of_week)
    tx = everything.filter(pl.col(C.ITEM) != placeholder_item)
    # The user's shopping days numbered 1..n: timing in visits, not just in days, so an
    # irregular shopper is not "overdue" just because they did not come to the store.
    visits = (
        everything.select(C.USER, C.DAY)
        .unique()
        .with_columns(
            pl.col(C.DAY).rank("dense").over(C.USER).cast(pl.Int32).alias("_visit"),
            pl.col(C.DAY).n_unique().over(C.USER).cast(pl.Int32).alias("_visits"),
        )
    )
    user_baskets = tx.group_by(C.USER).agg(
        pl.col(C.BASKET).n_unique().alias("_user_baskets"),
        pl.col(C.SALES).sum().alias("_user_spend"),
    )
    recent = pl.col(C.WEEK) >= as_of_week - cfg.recent_weeks
    decay = (
        (pl.col(_REF_DAY) - pl.col(C.DAY)).cast(pl.Float64)
        * (-0.6931471805599453 / cfg.half_life_days)
    ).exp()
    days = pl.col(C.DAY)
    n_days = days.n_unique()
    span = days.max() - days.min()
    return (
        tx.with_columns(decay.alias("_w"))
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
            (pl.col(_REF_DAY).first() - days.max()).alias("ui_days_since"),
            (pl.col(_REF_DAY).first() - days.min()).alias("ui_days_since_first"),
            pl.when(n_days > 1).then(span / (n_days - 1)).otherwise(None).alias("ui_interval"),
            pl.col(_DISC).mean().alias("ui_discount_share"),
            days.min().alias("_first_day"),
            days.max().alias("_last_day"),
        )
        .join(user_baskets, on=C.USER, how="left")
        .join(
            visits.select(C.USER, pl.col(C.DAY).alias("_first_day"), pl.col("_visit").alias("_v0")),
            on=[C.USER, "_first_day"],
            how="left",
        )
        .join(
            visits.select(
                C.USER, pl.col(C.DAY).alias("_last_day"), pl.col("_visit").alias("_v1"), "_visits"
            ),
            on=[C.USER, "_last_day"],
            how="left",
        )
        .with_columns(
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
    starts = (
        tx.filter(pl.col(C.ITEM) != placeholder_item)
        .select(C.USER, C.ITEM, C.WEEK)
        .unique()
        # A purchase in week w hits every window starting in w - horizon + 1 .. w.
        .with_columns(
            pl.int_ranges(pl.col(C.WEEK) - horizon_weeks + 1, pl.col(C.WEEK) + 1).alias("_s")
        )
        .explode("_s")
        .join(first, on=C.USER)
        .filter(pl.col("_s").is_between(pl.col("_first_week"), last_start))
        .group_by(C.USER, C.ITEM)
        .agg(pl.col("_s").n_unique().alias("_hits"), pl.col("_first_week").first())
    )
    return starts.select(
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
    tx = _prepared(transactions, as_of_week).filter(pl.col(C.ITEM) != placeholder_item)
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
            (pl.col(_REF_DAY).first() - pl.col(C.DAY).max()).alias(f"{prefix}_days_since"),
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


def categorical_codes(table: pl.LazyFrame, key: str, columns: tuple[str, ...]) -> pl.LazyFrame:
    """``key`` plus one ``{column}_code`` per column: dense rank of the value, 0 when null.

    The codes depend only on the table (sorted distinct values), so training and scoring on
    the same item/user table agree.
    """
    present = table.collect_schema().names()
    return table.select(
        key,
        *[
            pl.col(name)
            .cast(pl.String)
            .rank("dense")
            .fill_null(0)
            .cast(pl.Int32)
            .alias(f"{name}_code")
            if name in present
            else pl.lit(0, dtype=pl.Int32).alias(f"{name}_code")
            for name in columns
        ],
    ).unique(subset=key, keep="first")


def dot_product(
    candidates: pl.LazyFrame, user_factors: pl.DataFrame | None, item_factors: pl.DataFrame | None
) -> pl.LazyFrame:
    """``candidates`` plus ``als_dot``: user factor . item factor (null when either is absent)."""
    if (
        user_factors is None
        or item_factors is None
        or user_factors.is_empty()
        or item_factors.is_empty()
    ):
        return candidates.with_columns(pl.lit(None, dtype=pl.Float32).alias("als_dot"))
    u_cols = [c for c in user_factors.columns if c != C.USER]
    i_cols = [c for c in item_factors.columns if c != C.ITEM]
    shared = [c for c in u_cols if c in i_cols]
    users = user_factors.lazy().select(C.USER, pl.concat_list(shared).alias("_uf"))
    items = item_factors.lazy().select(C.ITEM, pl.concat_list(shared).alias("_if"))
    return (
        candidates.join(users, on=C.USER, how="left")
        .join(items, on=C.ITEM, how="left")
        .with_columns(
            (pl.col("_uf").list.to_array(len(shared)) * pl.col("_if").list.to_array(len(shared)))
            .arr.sum()
            .cast(pl.Float32)
            .alias("als_dot")
        )
        .drop("_uf", "_if")
    )


@dataclass(frozen=True)
class FeatureSet:
    """Candidates with every feature joined, and which columns the ranker should use."""

    frame: pl.LazyFrame
    feature_names: tuple[str, ...]
    categorical: tuple[str, ...]


def build_features(
    candidates: pl.LazyFrame,
    transactions: pl.LazyFrame,
    items: pl.LazyFrame | None,
    users: pl.LazyFrame | None,
    as_of_week: int,
    cfg: FeaturesConfig,
    *,
    user_factors: pl.DataFrame | None = None,
    item_factors: pl.DataFrame | None = None,
    placeholder_item: int = PLACEHOLDER,
) -> FeatureSet:
    """Join every feature family onto the candidates (schema ``CANDIDATES``), as of the cut.

    Parameters
    ----------
    candidates
        Stage-1 union: ``user_id``, ``item_id``, generator scores/ranks, ``n_generators``.
    transactions
        Catalogue-applied purchases; only ``week < as_of_week`` is read.
    items, users
        Product attributes and demographics, or None (their features are then constant).
    placeholder_item
        The id non-catalogue purchases carry (``settings.prefilter.placeholder_item``).

    Returns
    -------
    FeatureSet
        The joined frame (one row per candidate, nulls where a user never bought the item)
        and the ordered feature names; ``categorical`` lists the integer-coded categoricals.
    """
    base_cols = [c for c in candidates.collect_schema().names() if c not in (C.USER, C.ITEM)]
    ph = {"placeholder_item": placeholder_item}
    frame = (
        candidates.join(user_features(transactions, as_of_week, cfg, **ph), on=C.USER, how="left")
        .join(item_features(transactions, as_of_week, cfg, **ph), on=C.ITEM, how="left")
        .join(
            user_item_features(transactions, as_of_week, cfg, **ph),
            on=[C.USER, C.ITEM],
            how="left",
        )
        .join(
            window_hit_rate(transactions, as_of_week, cfg.horizon_weeks, cfg, **ph),
            on=[C.USER, C.ITEM],
            how="left",
        )
        .with_columns(
            pl.col(
                "ui_baskets",
                "ui_days",
                "ui_weeks",
                "ui_recent_weeks",
                "ui_recent2_weeks",
                "ui_recent4_weeks",
            ).fill_null(0),
            pl.col(
                "ui_recency_weighted",
                "ui_basket_share",
                "ui_spend_share",
                "ui_rate",
                "ui_visit_rate",
                "ui_week_share",
            ).fill_null(0.0),
            (pl.col("i_price") / pl.col("u_basket_spend")).alias("ui_price_vs_basket"),
        )
    )
    categorical: list[str] = []
    if items is not None:
        frame = frame.join(
            categorical_codes(items, C.ITEM, cfg.item_attributes), on=C.ITEM, how="left"
        )
        categorical += [f"{name}_code" for name in cfg.item_attributes]
        item_groups = items.select(C.ITEM, C.DEPARTMENT, C.CATEGORY, C.SUB_CATEGORY).unique(
            subset=C.ITEM, keep="first"
        )
        frame = frame.join(item_groups, on=C.ITEM, how="left")
        for group, prefix in GROUP_FAMILIES:
            frame = frame.join(
                user_group_features(transactions, items, as_of_week, group, prefix, cfg, **ph),
                on=[C.USER, group],
                how="left",
            ).with_columns(
                pl.col(f"{prefix}_baskets", f"{prefix}_items", f"{prefix}_days").fill_null(0),
                pl.col(f"{prefix}_share", f"{prefix}_basket_share").fill_null(0.0),
            )
        # Loyalty within the (sub-)category: share of the user's shopping days in it with
        # this item.
        frame = frame.drop(C.DEPARTMENT, C.CATEGORY, C.SUB_CATEGORY).with_columns(
            (pl.col("ui_days") / pl.col("uc_days")).alias("ui_category_loyalty"),
            (pl.col("ui_days") / pl.col("us_days")).alias("ui_sub_category_loyalty"),
        )
    if users is not None and cfg.use_demographics:
        frame = frame.join(
            categorical_codes(users, C.USER, USER_CATEGORICALS), on=C.USER, how="left"
        )
        frame = frame.with_columns(pl.col(f"{n}_code").fill_null(0) for n in USER_CATEGORICALS)
        categorical += [f"{name}_code" for name in USER_CATEGORICALS]
    frame = dot_product(frame, user_factors, item_factors)
    names = [c for c in frame.collect_schema().names() if c not in (C.USER, C.ITEM, C.TARGET)]
    # LightGBM bins float32 anyway; half the width halves the peak memory of the training
    # and scoring frames (~100 features x 430k candidates on the bundled data).
    frame = frame.with_columns(pl.col(names).cast(pl.Float32))
    ordered = [c for c in base_cols if c in names] + [c for c in names if c not in base_cols]
    return FeatureSet(frame=frame, feature_names=tuple(ordered), categorical=tuple(categorical))


def targets(
    window_transactions: pl.LazyFrame, placeholder_item: int, max_label: int = 1
) -> pl.LazyFrame:
    """Distinct (user, item) bought in a window, the placeholder excluded, with ``target``.

    ``target`` is the number of distinct days the user bought the item in the window, capped
    at ``max_label`` (the default 1: bought = 1); a graded label for ``lambdarank``. The set
    of positives is the same for every ``max_label``.
    """
    return (
        window_transactions.filter(pl.col(C.ITEM) != placeholder_item)
        .group_by(C.USER, C.ITEM)
        .agg(pl.col(C.DAY).n_unique().clip(1, max(max_label, 1)).cast(pl.Int8).alias(C.TARGET))
    )


def with_targets(candidates: pl.LazyFrame, truth: pl.LazyFrame) -> pl.LazyFrame:
    """``candidates`` plus ``target`` (the label of :func:`targets`, 0 when not bought)."""
    return candidates.join(truth, on=[C.USER, C.ITEM], how="left").with_columns(
        pl.col(C.TARGET).fill_null(0).cast(pl.Int8)
    )
