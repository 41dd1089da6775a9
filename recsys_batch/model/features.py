"""Stage-2 features: point-in-time Polars jobs joined onto the stage-1 candidates.

Every feature function takes the transactions and an ``as_of_week`` cut and looks only at
purchases with ``week < as_of_week`` (:mod:`recsys_batch.model.point_in_time`); the reference
day for recencies is the day after the newest purchase before the cut. Changing anything on
or after the cut therefore changes no feature (tests/unit/test_features.py checks it).

Families (issue #4): user and item (here), user x item (repurchase timing: usual interval and
how overdue the item is) and user x department, category and sub-category affinity
(:mod:`recsys_batch.model.user_item_features`), stage-1 scores and ranks (already columns of
the candidates), ALS dot product, product attributes and demographics as LightGBM
categoricals (missing is a value of its own: code 0). :func:`build_features` joins them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys_batch.config import FeaturesConfig
from recsys_batch.data import columns as C
from recsys_batch.model.ids import Factors
from recsys_batch.model.item_features import ITEM_FEATURES, item_features
from recsys_batch.model.plan_features import PlanTables, forward_blocks
from recsys_batch.model.point_in_time import (
    COUPONED,
    DISCOUNTED,
    PLACEHOLDER,
    REF_DAY,
    prepared,
)
from recsys_batch.model.user_item_features import (
    user_group_features,
    user_item_features,
    window_hit_rate,
)

# User x item-group affinity families: (item attribute, column prefix).
GROUP_FAMILIES = ((C.DEPARTMENT, "ud"), (C.CATEGORY, "uc"), (C.SUB_CATEGORY, "us"))

# Product attributes and demographics encoded as integer categories for LightGBM.
USER_CATEGORICALS = C.DEMOGRAPHICS


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
    tx = prepared(transactions, as_of_week)
    recent = pl.col(C.WEEK) >= as_of_week - cfg.recent_weeks
    baskets = tx.group_by(C.USER, C.BASKET).agg(
        pl.col(C.DAY).first().alias(C.DAY),
        pl.col(C.SALES).sum().alias("_basket_spend"),
        pl.len().alias("_basket_lines"),
        pl.col(C.WEEK).first().alias(C.WEEK),
        pl.col(REF_DAY).first().alias(REF_DAY),
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
        (pl.col(REF_DAY).first() - pl.col(C.DAY).max()).alias("u_days_since_visit"),
        (pl.col(REF_DAY).first() - pl.col(C.DAY).min()).alias("u_tenure_days"),
        recent.sum().alias("u_recent_baskets"),
    )
    per_line = tx.group_by(C.USER).agg(
        pl.col(C.SALES).sum().alias("u_spend"),
        pl.col(C.ITEM).n_unique().alias("u_distinct_items"),
        pl.col(DISCOUNTED).mean().alias("u_discount_share"),
        pl.col(COUPONED).mean().alias("u_coupon_share"),
        (pl.col(C.ITEM) == placeholder_item).mean().alias("u_placeholder_share"),
        pl.col(C.STORE).n_unique().alias("u_stores"),
    )
    return per_basket.join(per_line, on=C.USER, how="left").with_columns(
        (pl.col("u_baskets") / (pl.col("u_tenure_days") / 7.0).clip(1.0, None)).alias(
            "u_baskets_per_week"
        )
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


_DOT_CHUNK = 1 << 14
"""Candidate rows whose factors are gathered at once (4 MiB each at 64 factors: in cache)."""


def dot_product(
    keys: pl.DataFrame, user_factors: Factors | None, item_factors: Factors | None
) -> pl.DataFrame:
    """``als_dot`` of every row of ``keys``: user factor . item factor (null when absent)."""
    if not user_factors or not item_factors:
        return pl.DataFrame({"als_dot": pl.Series([None] * keys.height, dtype=pl.Float32)})
    user_rows = user_factors.ids.to_idx(keys[C.USER].to_numpy())
    item_rows = item_factors.ids.to_idx(keys[C.ITEM].to_numpy())
    known = (user_rows >= 0) & (item_rows >= 0)
    user_rows, item_rows = user_rows[known], item_rows[known]
    dot = np.zeros(user_rows.size, dtype=np.float32)
    width = min(user_factors.matrix.shape[1], item_factors.matrix.shape[1])
    # One contiguous row per factor: each factor's values of a chunk are gathered from it
    # instead of read with a stride from gathered factor rows (a third less time).
    users_t = np.ascontiguousarray(user_factors.matrix[:, :width].T)
    items_t = np.ascontiguousarray(item_factors.matrix[:, :width].T)
    for start in range(0, user_rows.size, _DOT_CHUNK):
        rows = slice(start, start + _DOT_CHUNK)
        users, items = user_rows[rows], item_rows[rows]
        chunk = dot[rows]
        # Factor by factor in float32: bit-equal to a row-wise sum of the float32 products.
        for f in range(width):
            chunk += users_t[f][users] * items_t[f][items]
    values = np.full(keys.height, np.nan, dtype=np.float32)
    values[known] = dot
    return pl.DataFrame({"als_dot": pl.Series(values).fill_nan(None)})


@dataclass(frozen=True)
class FeatureSet:
    """Candidates with every feature joined, and which columns the ranker should use."""

    frame: pl.LazyFrame
    feature_names: tuple[str, ...]
    categorical: tuple[str, ...]


# User x item counts and shares that are 0, not null, for an item the user never bought.
UI_ZERO_COUNTS = (
    "ui_baskets",
    "ui_days",
    "ui_weeks",
    "ui_recent_weeks",
    "ui_recent2_weeks",
    "ui_recent4_weeks",
)
UI_ZERO_SHARES = (
    "ui_recency_weighted",
    "ui_basket_share",
    "ui_spend_share",
    "ui_rate",
    "ui_visit_rate",
    "ui_week_share",
)


def aligned(keys: pl.DataFrame, table: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    """``table``'s other columns for every row of ``keys``, in the same order (null: absent).

    Joining each family onto the narrow key columns and putting the blocks side by side
    copies every feature once; joining family after family onto the growing frame copied
    the whole frame at each join.
    """
    block = keys.select(on).join(table, on=on, how="left", maintain_order="left").drop(on)
    if block.height != keys.height:
        msg = f"feature table is not unique on {on}: {block.height} rows for {keys.height} keys"
        raise ValueError(msg)
    return block


def side_tables(
    items: pl.LazyFrame | None, users: pl.LazyFrame | None, cfg: FeaturesConfig
) -> dict[str, pl.LazyFrame]:
    """The families that read only the item and user tables: ``codes`` and ``groups`` by
    item, ``demographics`` by user. The same for every user shard (computed once there)."""
    plans: dict[str, pl.LazyFrame] = {}
    if items is not None:
        plans["codes"] = categorical_codes(items, C.ITEM, cfg.item_attributes)
        plans["groups"] = items.select(C.ITEM, *(g for g, _ in GROUP_FAMILIES)).unique(
            subset=C.ITEM, keep="first"
        )
    if users is not None and cfg.use_demographics:
        plans["demographics"] = categorical_codes(users, C.USER, USER_CATEGORICALS)
    return plans


def family_tables(
    transactions: pl.LazyFrame,
    items: pl.LazyFrame | None,
    users: pl.LazyFrame | None,
    as_of_week: int,
    cfg: FeaturesConfig,
    placeholder_item: int,
    *,
    fixed: Mapping[str, pl.DataFrame] | None = None,
) -> dict[str, pl.DataFrame]:
    """Every feature family as of the cut, one small table each, collected together.

    ``fixed``: families computed elsewhere, used as given: for a shard of users, ``item``
    over every user's purchases (not the shard's) and the :func:`side_tables`. Keys:
    ``user``/``demographics`` by user, ``item``/``codes``/``groups`` by item, ``ui``/``hit``
    by (user, item), the group families' prefixes by (user, group value).
    """
    fixed = fixed or {}
    ph = {"placeholder_item": placeholder_item}
    plans: dict[str, pl.LazyFrame] = {
        "user": user_features(transactions, as_of_week, cfg, **ph),
        "ui": user_item_features(transactions, as_of_week, cfg, **ph),
        "hit": window_hit_rate(transactions, as_of_week, cfg.horizon_weeks, cfg, **ph),
        "item": item_features(transactions, as_of_week, cfg, placeholder_item=placeholder_item),
        **side_tables(items, users, cfg),
    }
    if items is not None:
        for group, prefix in GROUP_FAMILIES:
            plans[prefix] = user_group_features(
                transactions, items, as_of_week, group, prefix, cfg, **ph
            )
    todo = {name: plan for name, plan in plans.items() if name not in fixed}
    tables = dict(zip(todo, pl.collect_all(list(todo.values())), strict=True))
    given = {name: fixed[name] for name in plans if name in fixed}
    if "item" in given:
        given["item"] = given["item"].select(C.ITEM, *ITEM_FEATURES)
    return {**tables, **given}


def history_blocks(keys: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> list[pl.DataFrame]:
    """The user, item, user x item and hit-rate columns of ``keys``' rows."""
    ui = aligned(keys, tables["ui"], [C.USER, C.ITEM]).with_columns(
        pl.col(*UI_ZERO_COUNTS).fill_null(0), pl.col(*UI_ZERO_SHARES).fill_null(0.0)
    )
    user = aligned(keys, tables["user"], [C.USER])
    item = aligned(keys, tables["item"], [C.ITEM])
    derived = pl.DataFrame([(item["i_price"] / user["u_basket_spend"]).alias("ui_price_vs_basket")])
    return [user, item, ui, aligned(keys, tables["hit"], [C.USER, C.ITEM]), derived]


def item_group_blocks(
    keys: pl.DataFrame, tables: dict[str, pl.DataFrame], ui_days: pl.Series
) -> list[pl.DataFrame]:
    """The product-attribute codes, the user x group families and loyalty of ``keys``' rows."""
    groups = aligned(keys, tables["groups"], [C.ITEM])
    with_groups = pl.concat([keys, groups], how="horizontal")
    blocks = [aligned(keys, tables["codes"], [C.ITEM])]
    for group, prefix in GROUP_FAMILIES:
        blocks.append(
            aligned(with_groups, tables[prefix], [C.USER, group]).with_columns(
                pl.col(f"{prefix}_baskets", f"{prefix}_items", f"{prefix}_days").fill_null(0),
                pl.col(f"{prefix}_share", f"{prefix}_basket_share").fill_null(0.0),
            )
        )
    # Loyalty within the (sub-)category: share of the user's shopping days in it with
    # this item.
    uc_days, us_days = blocks[2]["uc_days"], blocks[3]["us_days"]
    blocks.append(
        pl.DataFrame(
            [
                (ui_days / uc_days).alias("ui_category_loyalty"),
                (ui_days / us_days).alias("ui_sub_category_loyalty"),
            ]
        )
    )
    return blocks


def build_features(
    candidates: pl.LazyFrame | pl.DataFrame,
    transactions: pl.LazyFrame,
    items: pl.LazyFrame | None,
    users: pl.LazyFrame | None,
    as_of_week: int,
    cfg: FeaturesConfig,
    *,
    user_factors: Factors | None = None,
    item_factors: Factors | None = None,
    placeholder_item: int = PLACEHOLDER,
    fixed: Mapping[str, pl.DataFrame] | None = None,
    plan_tables: PlanTables | None = None,
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
    fixed
        Families computed elsewhere (:func:`family_tables`), e.g. for a shard of users the
        item family (``item_id`` and ``ITEM_FEATURES``) over every user and the
        :func:`side_tables`; the others are computed from ``transactions``.
    plan_tables
        The run's plan tables when it uses the forward-looking plan features
        (:mod:`recsys_batch.model.plan_features`: the weeks after the cut, from the calendar
        only); None: no such feature.

    Returns
    -------
    FeatureSet
        The joined frame (one row per candidate in the candidates' order, nulls where a
        user never bought the item) and the ordered feature names; ``categorical`` lists
        the integer-coded categoricals.
    """
    keys = candidates.collect() if isinstance(candidates, pl.LazyFrame) else candidates
    base_cols = [c for c in keys.columns if c not in (C.USER, C.ITEM)]
    tables = family_tables(
        transactions, items, users, as_of_week, cfg, placeholder_item, fixed=fixed
    )
    blocks = [keys, *history_blocks(keys, tables)]
    categorical: list[str] = []
    if items is not None:
        blocks += item_group_blocks(keys, tables, blocks[3]["ui_days"])
        categorical += [f"{name}_code" for name in cfg.item_attributes]
    if "demographics" in tables:
        blocks.append(
            aligned(keys, tables["demographics"], [C.USER]).with_columns(
                pl.col(f"{n}_code").fill_null(0) for n in USER_CATEGORICALS
            )
        )
        categorical += [f"{name}_code" for name in USER_CATEGORICALS]
    blocks.append(dot_product(keys, user_factors, item_factors))
    if plan_tables is not None:
        blocks.append(forward_blocks(keys, transactions, as_of_week, plan_tables))
    joined = pl.concat(blocks, how="horizontal")
    names = [c for c in joined.columns if c not in (C.USER, C.ITEM, C.TARGET)]
    # LightGBM bins float32 anyway; half the width halves the peak memory of the training
    # and scoring frames (about a hundred features per candidate).
    frame = joined.with_columns(pl.col(names).cast(pl.Float32)).lazy()
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
