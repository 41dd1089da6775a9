"""The backtest's baselines: popular, own purchases, ALS alone and the co-purchase anchor.

Each returns schema ``RECOMMENDATIONS`` (``user_id, item_id, rank, score``), best first, so
that :func:`recsys_batch.evaluation.metrics.evaluate` scores them like the two-stage model.
TIFU-KNN is in :mod:`recsys_batch.evaluation.tifu_knn`.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_batch.data import columns as C
from recsys_batch.model import candidates as stage1


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


def als_baseline(
    model: stage1.Stage1Model, users: pl.LazyFrame, k: int, chunk_users: int
) -> pl.LazyFrame:
    """ALS alone: the fitted ALS model's own top ``k`` over the whole catalogue.

    implicit's ``recommend`` scores every catalogue item for each user known to ``model``
    (already-bought items allowed, the placeholder never); it does not see the other
    generators or the candidate cap.
    """
    wanted = users.select(C.USER).unique().collect()[C.USER].to_numpy()
    user_idx = model.users.to_idx(wanted)
    user_idx = np.sort(user_idx[user_idx >= 0])
    u, i, s = stage1.als_recommend(model, user_idx, k, chunk_users)
    scored = pl.DataFrame(
        {
            C.USER: pl.Series(model.users.to_ids(u), dtype=pl.Int64),
            C.ITEM: pl.Series(model.items.to_ids(i), dtype=pl.Int64),
            "_s": pl.Series(s, dtype=pl.Float64),
        }
    )
    return ranked_list(scored.lazy(), "_s", k)


def _pairs_matrix(model: stage1.Stage1Model, pairs: pl.DataFrame) -> sp.csr_matrix:
    """``pairs`` (``user_id, item_id``) as a boolean user x item matrix in ``model``'s indices.

    Pairs of a user or an item the model does not know are left out.
    """
    users = model.users.to_idx(pairs[C.USER].to_numpy())
    items = model.items.to_idx(pairs[C.ITEM].to_numpy())
    known = (users >= 0) & (items >= 0)
    return sp.csr_matrix(
        (np.ones(int(known.sum()), dtype=bool), (users[known], items[known])),
        shape=(model.n_users, len(model.items)),
    )


def _new_top_k(scores: np.ndarray, bought: sp.csr_matrix, k: int) -> tuple[np.ndarray, ...]:
    """Rows, columns and values of each row's ``k`` best positive scores outside ``bought``.

    Best first; ties by lower column (item index, i.e. item id).
    """
    rows, cols = bought.nonzero()
    scores[rows, cols] = 0.0
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(scores, top, axis=1)
    ok = values > 0
    return np.nonzero(ok)[0], top[ok], values[ok]


def copurchase_new_baseline(
    model: stage1.Stage1Model,
    users: pl.LazyFrame,
    bought: pl.DataFrame,
    k: int,
    chunk_users: int,
) -> pl.LazyFrame:
    """The co-purchase anchor of new items: neighbours of the user's items never bought.

    The stage-1 co-purchase generator's own scores (``model.seeds``, the user's last
    ``candidates.recent_baskets`` baskets, times ``model.similarity``), without the items of
    ``bought`` (``user_id, item_id`` bought before the test window), top ``k`` with a
    positive score. Users unknown to ``model`` get no rows.
    """
    wanted = users.select(C.USER).unique().collect()[C.USER].to_numpy()
    user_idx = model.users.to_idx(wanted)
    user_idx = np.sort(user_idx[user_idx >= 0])
    before = _pairs_matrix(model, bought)
    out_u, out_i, out_s = [], [], []
    for start in range(0, user_idx.size, max(chunk_users, 1)):
        chunk = user_idx[start : start + chunk_users]
        scores = (model.seeds[chunk] @ model.similarity).toarray().astype(np.float64)
        row, item, score = _new_top_k(scores, before[chunk], k)
        out_u.append(chunk[row])
        out_i.append(item)
        out_s.append(score)
    flat = [np.concatenate(parts) if parts else np.array([]) for parts in (out_u, out_i, out_s)]
    scored = pl.DataFrame(
        {
            C.USER: pl.Series(model.users.to_ids(flat[0].astype(np.int64)), dtype=pl.Int64),
            C.ITEM: pl.Series(model.items.to_ids(flat[1].astype(np.int64)), dtype=pl.Int64),
            "_s": pl.Series(flat[2], dtype=pl.Float64),
        }
    )
    return ranked_list(scored.lazy(), "_s", k)
