"""TIFU-KNN, the next-basket baseline of Hu et al. (SIGIR 2020), on Polars, numpy and scipy.

A user's catalogue baskets, oldest to newest, are split into ``g = min(baskets, groups)``
consecutive groups of near-equal size (basket ``p`` of ``n``, 0-based, is in group
``floor(p * g / n)``). Each basket is a 0/1 item vector. Within group ``i`` of ``m``
baskets, the ``j``-th basket (1-based) weighs ``within_decay ** (m - j)``, and the group
vector is their weighted sum divided by ``m``. The user vector is
``sum_i group_decay ** (g - 1 - i) * group_i / g`` (Eq. 3-4 of the paper).

The prediction blends the user's vector with the mean vector of the ``neighbours`` nearest
other users (Euclidean distance between user vectors, as the authors' code does):
``alpha * u + (1 - alpha) * mean(neighbours)``; the top ``k`` items are recommended,
already-bought items included (repeat purchases are the point of the method). Ties go to
the lower item id.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_batch.config import TifuKnnConfig
from recsys_batch.data import columns as C
from recsys_batch.evaluation.baselines import ranked_list


def user_vectors(
    transactions: pl.LazyFrame, cfg: TifuKnnConfig
) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """The time-decayed, group-decayed item-frequency vector of every user.

    Parameters
    ----------
    transactions
        Purchases of the items that may be recommended (``user_id, basket_id, day,
        item_id``); a basket is one ``basket_id``, ordered by ``day`` then id.

    Returns
    -------
    tuple
        ``(user_ids, item_ids, vectors)``: ascending business ids and the users x items
        CSR matrix of the user vectors (rows and columns in that order).
    """
    baskets = transactions.select(C.USER, C.BASKET, C.DAY, C.ITEM).unique().collect()
    order = (
        baskets.group_by(C.USER, C.BASKET)
        .agg(pl.col(C.DAY).min())
        .sort(C.USER, C.DAY, C.BASKET)
        .with_columns(
            (pl.int_range(pl.len()).over(C.USER)).alias("_p"),
            pl.len().over(C.USER).alias("_n"),
        )
        .with_columns(pl.min_horizontal("_n", pl.lit(cfg.groups)).alias("_g"))
        .with_columns((pl.col("_p") * pl.col("_g") // pl.col("_n")).alias("_group"))
        .with_columns(
            pl.len().over(C.USER, "_group").alias("_m"),
            pl.int_range(1, pl.len() + 1).over(C.USER, "_group").alias("_j"),
        )
    )
    m, j, g, group = pl.col("_m"), pl.col("_j"), pl.col("_g"), pl.col("_group")
    weight = (
        pl.lit(cfg.within_decay).pow(m - j) / m * pl.lit(cfg.group_decay).pow(g - 1 - group) / g
    )
    weights = order.select(C.USER, C.BASKET, weight.cast(pl.Float64).alias("_w"))
    summed = (
        baskets.join(weights, on=[C.USER, C.BASKET])
        .group_by(C.USER, C.ITEM)
        .agg(pl.col("_w").sum())
    )
    user_ids = np.sort(summed[C.USER].unique().to_numpy())
    item_ids = np.sort(summed[C.ITEM].unique().to_numpy())
    rows = np.searchsorted(user_ids, summed[C.USER].to_numpy())
    cols = np.searchsorted(item_ids, summed[C.ITEM].to_numpy())
    vectors = sp.csr_matrix(
        (summed["_w"].to_numpy(), (rows, cols)), shape=(user_ids.size, item_ids.size)
    )
    return user_ids, item_ids, vectors


def blended_scores(vectors: sp.csr_matrix, rows: np.ndarray, cfg: TifuKnnConfig) -> np.ndarray:
    """``alpha * u + (1 - alpha) * mean(nearest neighbours)`` for the users at ``rows``.

    Returns a dense ``len(rows) x items`` array. Distances are Euclidean; the user is not
    its own neighbour; ties between equally distant users go to the lower row.
    """
    n_users = vectors.shape[0]
    n_nb = min(cfg.neighbours, n_users - 1)
    own = vectors[rows].toarray()
    if n_nb <= 0:
        return own
    sq_norms = np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel()
    dot = (vectors[rows] @ vectors.T).toarray()
    dist = sq_norms[rows][:, None] + sq_norms[None, :] - 2.0 * dot
    dist[np.arange(rows.size), rows] = np.inf
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :n_nb]
    pick = sp.csr_matrix(
        (
            np.full(nearest.size, 1.0 / n_nb),
            (np.repeat(np.arange(rows.size), n_nb), nearest.ravel()),
        ),
        shape=(rows.size, n_users),
    )
    neighbours = (pick @ vectors).toarray()
    return cfg.alpha * own + (1.0 - cfg.alpha) * neighbours


def tifu_knn_baseline(
    transactions: pl.LazyFrame,
    catalogue: pl.LazyFrame,
    users: pl.LazyFrame,
    cfg: TifuKnnConfig,
    k: int,
    placeholder_item: int,
) -> pl.LazyFrame:
    """Top ``k`` catalogue items per user of ``users`` by TIFU-KNN (``RECOMMENDATIONS``).

    Every user with a catalogue purchase in ``transactions`` is a possible neighbour; users
    without one get no list (they score 0 in the metrics).
    """
    allowed = catalogue.select(C.ITEM).filter(pl.col(C.ITEM) != placeholder_item)
    user_ids, item_ids, vectors = user_vectors(
        transactions.join(allowed, on=C.ITEM, how="semi"), cfg
    )
    wanted = users.select(C.USER).unique().collect()[C.USER].to_numpy()
    rows = np.searchsorted(user_ids, wanted)
    known = rows < user_ids.size
    known[known] = user_ids[rows[known]] == wanted[known]
    rows = np.sort(rows[known])
    parts: list[pl.DataFrame] = []
    for start in range(0, rows.size, max(cfg.chunk_users, 1)):
        chunk = rows[start : start + cfg.chunk_users]
        scores = blended_scores(vectors, chunk, cfg)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        parts.append(
            pl.DataFrame(
                {
                    C.USER: np.repeat(user_ids[chunk], top.shape[1]),
                    C.ITEM: item_ids[top.ravel()],
                    "_s": top_scores.ravel(),
                }
            ).filter(pl.col("_s") > 0)
        )
    scored = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(schema={C.USER: pl.Int64, C.ITEM: pl.Int64, "_s": pl.Float64})
    )
    return ranked_list(scored.lazy().cast({C.USER: pl.Int64, C.ITEM: pl.Int64}), "_s", k)
