"""Top-k ranking metrics, computed per user in Polars and averaged over a user set.

Conventions (issue #4):

- ``recommendations`` has one row per (user, item) with ``rank`` 1 = best; only the first
  ``k`` ranks count. Users of the evaluated set without recommendations score 0.
- ``truth`` holds the distinct items each user bought in the test window. A user of the set
  with no relevant item scores 0 on every metric (they still count in the average).
- Precision@k = hits in the top k / k.
- Recall@k = hits / number of relevant items.
- MAP@k: AP@k = sum over hit positions i <= k of precision@i, divided by min(relevant, k).
- NDCG@k: DCG = sum over hits of 1 / log2(rank + 1); IDCG is the DCG of a perfect list of
  min(relevant, k) hits.
- Coverage = distinct recommended items (top k, over the user set) / catalogue size.

Revenue and discovery (issue #26; a slot is one of a user's top-k rows):

- revenue@k = the user's test-window spend (``sales_value``) on the items of their top k,
  averaged over the user set (a user without recommendations or spend counts 0).
- A slot is *new* when the user never bought its item in any week before the test window
  (:func:`recsys_batch.evaluation.protocol.bought_before`), a *repeat* slot otherwise.
- new_share = new slots / all slots; repeat_hit = hits among repeat slots / repeat slots;
  new_hit = hits among new slots / new slots (slots pooled over the user set; None when the
  set has no such slot). A list of new items only has new_hit = hits / slots, its hit rate.
"""

from __future__ import annotations

import polars as pl

from recsys_batch.data import columns as C

_HIT = "_hit"
_N_REL = "_n_relevant"
_NEW = "_new"
_SPEND = "_spend"
METRIC_NAMES = ("precision", "recall", "map", "ndcg")
SLOTS = "slots"
NEW_SLOTS = "new_slots"
HITS = "hits"
NEW_HITS = "new_hits"
DISCOVERY_NAMES = ("new_share", "repeat_hit", "new_hit")


def metric_key(name: str, k: int) -> str:
    """Key of a metric in result rows, e.g. ``precision@5``."""
    return f"{name}@{k}"


def hits(recommendations: pl.LazyFrame, truth: pl.LazyFrame, k: int) -> pl.LazyFrame:
    """The top-k rows of each user with a boolean ``_hit`` (item bought in the truth)."""
    relevant = truth.select(C.USER, C.ITEM).unique().with_columns(pl.lit(True).alias(_HIT))
    return (
        recommendations.filter(pl.col(C.RANK) <= k)
        .select(C.USER, C.ITEM, C.RANK)
        .join(relevant, on=[C.USER, C.ITEM], how="left")
        .with_columns(pl.col(_HIT).fill_null(False))
    )


def per_user_metrics(
    recommendations: pl.LazyFrame, truth: pl.LazyFrame, users: pl.LazyFrame, k: int
) -> pl.LazyFrame:
    """One row per user of ``users``: ``precision@k``, ``recall@k``, ``map@k``, ``ndcg@k``.

    Parameters
    ----------
    recommendations
        ``user_id``, ``item_id``, ``rank`` (1 = best); ranks above ``k`` are ignored.
    truth
        ``user_id``, ``item_id``: what each user really bought (duplicates ignored).
    users
        ``user_id``: the evaluated user set; every one of them gets a row.
    """
    n_relevant = truth.select(C.USER, C.ITEM).unique().group_by(C.USER).agg(pl.len().alias(_N_REL))
    hit = pl.col(_HIT).cast(pl.Float64)
    cum_hits = hit.cum_sum().over(C.USER, order_by=C.RANK)
    per_user = (
        hits(recommendations, truth, k)
        .with_columns(
            (hit * cum_hits / pl.col(C.RANK)).alias("_prec_at_i"),
            (hit / (pl.col(C.RANK).cast(pl.Float64) + 1.0).log(2)).alias("_gain"),
        )
        .group_by(C.USER)
        .agg(
            hit.sum().alias("_hits"),
            pl.col("_prec_at_i").sum().alias("_ap_sum"),
            pl.col("_gain").sum().alias("_dcg"),
        )
    )
    ideal_positions = pl.int_ranges(1, pl.min_horizontal(pl.col(_N_REL), pl.lit(k)) + 1)
    idcg = ideal_positions.list.eval(1.0 / (pl.element().cast(pl.Float64) + 1.0).log(2)).list.sum()
    n_rel = pl.col(_N_REL).fill_null(0)
    positive = n_rel > 0
    return (
        users.select(C.USER)
        .unique()
        .join(per_user, on=C.USER, how="left")
        .join(n_relevant, on=C.USER, how="left")
        .with_columns(pl.col("_hits", "_ap_sum", "_dcg").fill_null(0.0), n_rel.alias(_N_REL))
        .select(
            C.USER,
            (pl.col("_hits") / k).alias(metric_key("precision", k)),
            pl.when(positive)
            .then(pl.col("_hits") / n_rel)
            .otherwise(0.0)
            .alias(metric_key("recall", k)),
            pl.when(positive)
            .then(pl.col("_ap_sum") / pl.min_horizontal(n_rel, pl.lit(k)))
            .otherwise(0.0)
            .alias(metric_key("map", k)),
            pl.when(positive)
            .then(pl.col("_dcg") / idcg)
            .otherwise(0.0)
            .alias(metric_key("ndcg", k)),
        )
    )


def evaluate(
    recommendations: pl.LazyFrame,
    truth: pl.LazyFrame,
    users: pl.LazyFrame,
    *,
    k: int = 5,
    catalogue_size: int | None = None,
) -> dict[str, float]:
    """Mean of the per-user metrics over ``users``, plus ``users`` and ``coverage``.

    Returns
    -------
    dict
        ``users`` (count), ``precision@k``, ``recall@k``, ``map@k``, ``ndcg@k`` and
        ``coverage`` (distinct recommended items among the users / ``catalogue_size``; NaN
        when the size is not given).
    """
    means = (
        per_user_metrics(recommendations, truth, users, k)
        .select(
            pl.len().alias("users"),
            *[pl.col(metric_key(m, k)).mean().fill_null(0.0) for m in METRIC_NAMES],
        )
        .collect()
        .row(0, named=True)
    )
    recommended = (
        recommendations.filter(pl.col(C.RANK) <= k)
        .join(users.select(C.USER).unique(), on=C.USER, how="semi")
        .select(pl.col(C.ITEM).n_unique())
        .collect()
        .item()
    )
    coverage = recommended / catalogue_size if catalogue_size else float("nan")
    return {**means, "users": int(means["users"]), "coverage": float(coverage)}


def precision_curve(
    recommendations: pl.LazyFrame, truth: pl.LazyFrame, users: pl.LazyFrame, max_k: int = 10
) -> list[float]:
    """Mean precision@k over ``users`` for k = 1..max_k (one pass over the top max_k)."""
    top = hits(recommendations, truth, max_k).join(
        users.select(C.USER).unique(), on=C.USER, how="semi"
    )
    n_users = users.select(pl.col(C.USER).n_unique()).collect().item()
    if n_users == 0:
        return [0.0] * max_k
    by_rank = top.group_by(C.RANK).agg(pl.col(_HIT).sum().alias("h")).collect().sort(C.RANK)
    hits_at = dict(zip(by_rank[C.RANK].to_list(), by_rank["h"].to_list(), strict=True))
    out, cum = [], 0
    for k in range(1, max_k + 1):
        cum += int(hits_at.get(k, 0))
        out.append(cum / (k * n_users))
    return out


def slot_outcomes(
    recommendations: pl.LazyFrame,
    truth: pl.LazyFrame,
    bought: pl.LazyFrame,
    spend: pl.LazyFrame,
    users: pl.LazyFrame,
    k: int,
) -> pl.LazyFrame:
    """Per user of ``users``: ``slots``, ``new_slots``, ``hits``, ``new_hits``, ``revenue@k``.

    Parameters
    ----------
    recommendations
        ``user_id``, ``item_id``, ``rank`` (1 = best); ranks above ``k`` are ignored.
    truth
        ``user_id``, ``item_id``: what each user bought in the test window.
    bought
        ``user_id``, ``item_id``: what each user bought before the test window; a slot
        whose item is not among them is new.
    spend
        ``user_id``, ``item_id``, ``sales_value``: test-window spend (rows of a pair summed).
    users
        ``user_id``: every one of them gets a row (zeros without recommendations).
    """
    before = bought.select(C.USER, C.ITEM).unique().with_columns(pl.lit(False).alias(_NEW))
    spent = spend.group_by(C.USER, C.ITEM).agg(pl.col(C.SALES).sum().alias(_SPEND))
    slots = (
        hits(recommendations, truth, k)
        .join(before, on=[C.USER, C.ITEM], how="left")
        .join(spent, on=[C.USER, C.ITEM], how="left")
        .with_columns(pl.col(_NEW).fill_null(True), pl.col(_SPEND).fill_null(0.0))
    )
    per_user = slots.group_by(C.USER).agg(
        pl.len().cast(pl.Int64).alias(SLOTS),
        pl.col(_NEW).sum().cast(pl.Int64).alias(NEW_SLOTS),
        pl.col(_HIT).sum().cast(pl.Int64).alias(HITS),
        (pl.col(_HIT) & pl.col(_NEW)).sum().cast(pl.Int64).alias(NEW_HITS),
        pl.col(_SPEND).sum().cast(pl.Float64).alias(metric_key("revenue", k)),
    )
    counts = [SLOTS, NEW_SLOTS, HITS, NEW_HITS, metric_key("revenue", k)]
    return (
        users.select(C.USER)
        .unique()
        .join(per_user, on=C.USER, how="left")
        .with_columns(pl.col(counts).fill_null(0))
    )


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def discovery(outcomes: pl.LazyFrame, k: int) -> dict[str, float | None]:
    """``revenue@k`` (mean over users), ``new_share``, ``repeat_hit``, ``new_hit`` (pooled).

    ``outcomes`` is :func:`slot_outcomes`; a rate whose denominator is 0 slots is None.
    """
    revenue = metric_key("revenue", k)
    sums = (
        outcomes.select(
            pl.col(revenue).mean().fill_null(0.0),
            pl.col(SLOTS, NEW_SLOTS, HITS, NEW_HITS).sum(),
        )
        .collect()
        .row(0, named=True)
    )
    slots, new_slots = int(sums[SLOTS]), int(sums[NEW_SLOTS])
    new_hits = int(sums[NEW_HITS])
    return {
        revenue: float(sums[revenue]),
        "new_share": _rate(new_slots, slots),
        "repeat_hit": _rate(int(sums[HITS]) - new_hits, slots - new_slots),
        "new_hit": _rate(new_hits, new_slots),
    }
