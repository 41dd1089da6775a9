"""Business ids <-> the contiguous indices ``implicit`` needs, and the user x item matrix.

``user_id``/``item_id`` are business ids; ``user_idx``/``item_idx`` are 0-based contiguous
integers, assigned in ascending id order so that the same ids always get the same indices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_batch.data import columns as C

log = logging.getLogger(__name__)

Interaction = Literal["count", "quantity", "recency"]
Weighting = Literal["none", "bm25", "tfidf"]

WEIGHT = "weight"


@dataclass(frozen=True)
class IdMap:
    """Sorted business ids; position ``i`` of ``ids`` is index ``i``."""

    ids: np.ndarray
    """int64 business ids, ascending and unique."""
    id_col: str
    idx_col: str

    def __len__(self) -> int:
        """Number of ids."""
        return int(self.ids.shape[0])

    def frame(self) -> pl.DataFrame:
        """``(id_col, idx_col)`` for joins; ``idx`` is Int32."""
        return pl.DataFrame(
            {
                self.id_col: pl.Series(self.ids, dtype=pl.Int64),
                self.idx_col: pl.Series(np.arange(len(self), dtype=np.int32), dtype=pl.Int32),
            }
        )

    def to_idx(self, ids: np.ndarray) -> np.ndarray:
        """Indices of ``ids``; -1 where an id is unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos_clipped = np.minimum(pos, len(self) - 1)
        found = self.ids[pos_clipped] == ids
        return np.where(found, pos_clipped, -1)

    def to_ids(self, idx: np.ndarray) -> np.ndarray:
        """Business ids of indices ``idx`` (all must be valid)."""
        return self.ids[np.asarray(idx, dtype=np.int64)]


def id_map(ids: pl.Series | np.ndarray, id_col: str, idx_col: str) -> IdMap:
    """Build an :class:`IdMap` from any (possibly repeated) ids."""
    values = np.unique(np.asarray(pl.Series(ids).drop_nulls().to_numpy(), dtype=np.int64))
    return IdMap(ids=values, id_col=id_col, idx_col=idx_col)


def interaction_weights(
    transactions: pl.LazyFrame,
    interaction: Interaction,
    *,
    half_life_days: float = 60.0,
    as_of_day: int | None = None,
) -> pl.LazyFrame:
    """One row per (user, item) with its interaction ``weight``.

    Parameters
    ----------
    transactions
        Purchases (at least ``user_id``, ``item_id``, ``basket_id``, ``day``, ``quantity``).
    interaction
        ``count``: distinct baskets containing the item; ``quantity``: units bought (a zero
        quantity, e.g. weighed goods, counts as one); ``recency``: each basket counts
        ``0.5 ** (age_days / half_life_days)``, the age measured from ``as_of_day``.
    as_of_day
        Reference day of the recency decay; None = the newest day in ``transactions``.

    Returns
    -------
    pl.LazyFrame
        ``user_id``, ``item_id``, ``weight`` (Float32, > 0).
    """
    if interaction == "count":
        # One group-by instead of unique + group-by: no copy of every distinct line.
        return transactions.group_by(C.USER, C.ITEM).agg(
            pl.col(C.BASKET).n_unique().cast(pl.Float32).alias(WEIGHT)
        )
    if interaction == "quantity":
        per_row = pl.max_horizontal(pl.col(C.QTY), pl.lit(1)).cast(pl.Float64)
        lines = transactions
    else:
        ref = pl.lit(as_of_day) if as_of_day is not None else pl.col(C.DAY).max()
        age = (ref - pl.col(C.DAY)).clip(lower_bound=0).cast(pl.Float64)
        per_row = pl.lit(0.5).pow(age / half_life_days)
        lines = transactions.select(C.USER, C.ITEM, C.BASKET, C.DAY).unique()
    return (
        lines.with_columns(per_row.alias(WEIGHT))
        .group_by(C.USER, C.ITEM)
        .agg(pl.col(WEIGHT).sum().cast(pl.Float32))
    )


def to_csr(
    weights: pl.DataFrame, users: IdMap, items: IdMap, value_col: str = WEIGHT
) -> sp.csr_matrix:
    """User x item CSR (float32) of ``weights``; rows/columns not in the maps are dropped."""
    u = users.to_idx(weights[C.USER].to_numpy())
    i = items.to_idx(weights[C.ITEM].to_numpy())
    keep = (u >= 0) & (i >= 0)
    data = weights[value_col].to_numpy().astype(np.float32)[keep]
    matrix = sp.coo_matrix(
        (data, (u[keep], i[keep])), shape=(len(users), len(items)), dtype=np.float32
    ).tocsr()
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def weighted(
    matrix: sp.csr_matrix, weighting: Weighting, *, k1: float = 100.0, b: float = 0.8
) -> sp.csr_matrix:
    """Apply implicit's BM25 or TF-IDF weighting (items as documents' terms) to a user x item CSR.

    implicit weights an item x user matrix, so the matrix is transposed there and back.
    """
    if weighting == "none":
        return matrix.astype(np.float32).tocsr()
    from implicit.nearest_neighbours import bm25_weight, tfidf_weight  # noqa: PLC0415

    if weighting == "bm25":
        out = bm25_weight(matrix.T.tocoo(), K1=k1, B=b)
    else:
        out = tfidf_weight(matrix.T.tocoo())
    return sp.csr_matrix(out.T, dtype=np.float32)


def user_item_matrix(
    transactions: pl.LazyFrame,
    users: IdMap,
    items: IdMap,
    interaction: Interaction = "count",
    weighting: Weighting = "none",
    *,
    half_life_days: float = 60.0,
    as_of_day: int | None = None,
    bm25_k1: float = 100.0,
    bm25_b: float = 0.8,
) -> sp.csr_matrix:
    """The weighted user x item CSR matrix of ``transactions`` (one collect).

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(len(users), len(items))``, float32, rows in ``users`` order.
    """
    weights = interaction_weights(
        transactions, interaction, half_life_days=half_life_days, as_of_day=as_of_day
    ).collect()
    matrix = to_csr(weights, users, items)
    return weighted(matrix, weighting, k1=bm25_k1, b=bm25_b)
