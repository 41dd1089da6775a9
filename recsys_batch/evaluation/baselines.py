"""The backtest's baselines: popular, own purchases and ALS alone, as top-k lists per user.

Each returns schema ``RECOMMENDATIONS`` (``user_id, item_id, rank, score``), best first, so
that :func:`recsys_batch.evaluation.metrics.evaluate` scores them like the two-stage model.
"""

from __future__ import annotations

import polars as pl

from recsys_batch.data import columns as C


def ranked_list(scored: pl.LazyFrame, by: str, k: int, *, descending: bool = True) -> pl.LazyFrame:
    """Top ``k`` per user of ``scored`` ordered by column ``by`` (schema ``RECOMMENDATIONS``)."""
    return (
        scored.sort([C.USER, by, C.ITEM], descending=[False, descending, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over(C.USER).cast(pl.Int32).alias(C.RANK))
        .filter(pl.col(C.RANK) <= k)
        .select(C.USER, C.ITEM, C.RANK, pl.col(by).cast(pl.Float32).alias(C.SCORE))
    )


def popular_baseline(users: pl.LazyFrame, popular: list[int], k: int) -> pl.LazyFrame:
    """Every user gets the same ``popular`` list."""
    items = pl.LazyFrame(
        {
            C.ITEM: popular[:k],
            C.RANK: list(range(1, min(k, len(popular)) + 1)),
        },
        schema={C.ITEM: pl.Int64, C.RANK: pl.Int32},
    )
    return (
        users.select(C.USER)
        .join(items, how="cross")
        .with_columns((1.0 / pl.col(C.RANK)).cast(pl.Float32).alias(C.SCORE))
    )


def own_purchases_baseline(
    tx: pl.LazyFrame,
    catalogue: pl.LazyFrame,
    users: pl.LazyFrame,
    popular: list[int],
    half_life_days: float,
    k: int,
) -> pl.LazyFrame:
    """The user's own catalogue purchases by recency-weighted count, padded with popular."""
    ref_day = pl.col(C.DAY).max() + 1
    weight = (2.0 ** (-(ref_day - pl.col(C.DAY)).cast(pl.Float64) / half_life_days)).alias("_w")
    own = (
        tx.join(catalogue.select(C.ITEM), on=C.ITEM, how="semi")
        .with_columns(weight)
        .group_by(C.USER, C.ITEM)
        .agg(pl.col("_w").sum().alias("_s"))
        .join(users.select(C.USER), on=C.USER, how="semi")
    )
    # Popular items score below any own purchase (own scores are > 0).
    pad = popular_baseline(users, popular, k).select(
        C.USER, C.ITEM, (-pl.col(C.RANK).cast(pl.Float64)).alias("_s")
    )
    merged = pl.concat([own, pad]).group_by(C.USER, C.ITEM).agg(pl.col("_s").max())
    return ranked_list(merged, "_s", k)


def als_baseline(candidates: pl.LazyFrame, k: int) -> pl.LazyFrame:
    """ALS alone: the ALS generator's own ranking of the candidates."""
    rank = C.rank_col("als")
    return ranked_list(
        candidates.filter(pl.col(rank).is_not_null()).with_columns(
            (-pl.col(rank).cast(pl.Float64)).alias("_s")
        ),
        "_s",
        k,
    )
