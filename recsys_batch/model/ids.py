"""Business ids <-> the contiguous indices ``implicit`` needs, and the user x item matrix.

``user_id``/``item_id`` are business ids; ``user_idx``/``item_idx`` are 0-based contiguous
integers, assigned in ascending id order so that the same ids always get the same indices.
Stage 1 fits in this index space (:func:`compact_lines`, schema ``FIT_LINES``) and turns
only its small outputs back into business ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_batch.data import columns as C
from recsys_batch.errors import DataError

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

    def id_of(self, idx: pl.Expr) -> pl.Expr:
        """Int64 business ids of the indices ``idx`` (all must be valid), named ``id_col``."""
        return pl.lit(pl.Series(self.ids, dtype=pl.Int64)).gather(idx).alias(self.id_col)


@dataclass(frozen=True)
class Factors:
    """ALS factors of some ids: row ``i`` of ``matrix`` (float32) belongs to ``ids.ids[i]``."""

    ids: IdMap
    matrix: np.ndarray

    def __len__(self) -> int:
        """Number of ids with factors."""
        return len(self.ids)


ITEM_PART = "item_part"
"""Column (and folder key) holding a line's part of whole items."""


def item_part(n_parts: int) -> pl.Expr:
    """The part (``UInt32`` in ``0 .. n_parts - 1``) of each line's item, named ``item_part``.

    For group-bys by item computed part by part: every item's lines fall in one part. The
    hash is Polars' own, stable within a process (parts never outlive one).
    """
    return (pl.col(C.ITEM).hash() % n_parts).cast(pl.UInt32).alias(ITEM_PART)


def id_map(ids: pl.Series | np.ndarray, id_col: str, idx_col: str) -> IdMap:
    """Build an :class:`IdMap` from any (possibly repeated) ids."""
    # polars' unique and sort: np.unique takes ~40 s on the 16M basket ids at 100x, this ~1 s.
    values = pl.Series(ids).cast(pl.Int64).drop_nulls().unique().sort().to_numpy()
    return IdMap(ids=values, id_col=id_col, idx_col=idx_col)


@dataclass(frozen=True)
class FitLines:
    """Purchases in index space (schema ``FIT_LINES``) and the maps back to business ids."""

    lines: pl.DataFrame
    """``user_idx``, ``basket_idx``, ``day``, ``item_idx``, ``week`` (then any extra column)."""
    users: IdMap
    """``user_idx`` -> ``user_id``."""
    items: IdMap
    """``item_idx`` -> ``item_id``."""
    n_baskets: int
    """Distinct baskets: ``basket_idx`` runs from 0 to ``n_baskets - 1``."""
    part_lines: int
    """About how many lines :meth:`collect_by` gives one part."""

    @property
    def shape(self) -> tuple[int, int]:
        """(users, items): the shape of a user x item matrix of these lines."""
        return len(self.users), len(self.items)

    def collect_by(self, key: str, query: Callable[[pl.LazyFrame], pl.LazyFrame]) -> pl.DataFrame:
        """``query`` of the lines, collected part by part and concatenated.

        Each part holds whole ranges of ``key`` (``user_idx`` or ``basket_idx``), about
        ``part_lines`` lines: for a query that only combines lines of the same ``key`` (it
        groups by ``key``, and maybe more), the rows are those of one query over every line,
        while its hash tables hold one part at a time (issue #17: 4.4 GB at 100x for the
        user x item group-by over every line).
        """
        n_keys = {C.USER_IDX: len(self.users), C.BASKET_IDX: self.n_baskets}[key]
        n_parts = max(1, -(-self.lines.height // self.part_lines))
        bounds = np.linspace(0, n_keys, n_parts + 1).round().astype(np.int64).tolist()
        in_part = [pl.col(key).is_between(lo, hi, closed="left") for lo, hi in pairwise(bounds)]
        return pl.concat([query(self.lines.lazy().filter(p)).collect() for p in in_part])


_INT16 = np.iinfo(np.int16)


def _id_map_of(lines: pl.LazyFrame, id_col: str, idx_col: str) -> IdMap:
    """The :class:`IdMap` of the distinct values of ``id_col`` (a streaming pass)."""
    return id_map(
        lines.select(pl.col(id_col).unique()).collect(engine="streaming")[id_col], id_col, idx_col
    )


def _require_int16(lines: pl.LazyFrame, cols: Sequence[str]) -> None:
    bounds = lines.select(
        *(pl.col(c).min().alias(f"{c}_min") for c in cols),
        *(pl.col(c).max().alias(f"{c}_max") for c in cols),
    ).collect(engine="streaming")
    for col in cols:
        lo, hi = bounds[f"{col}_min"].item(), bounds[f"{col}_max"].item()
        if lo is not None and (lo < _INT16.min or hi > _INT16.max):
            msg = f"{col} runs from {lo} to {hi}, outside Int16 ({_INT16.min}..{_INT16.max})"
            raise DataError(msg, column=col, fix=f"renumber {col} from the first day of the data")


def _dense_index(col: str, distinct: np.ndarray) -> pl.Expr:
    """Position of each value of ``col`` in ``distinct`` (ascending, holding them all), UInt32."""
    ascending = pl.Series(distinct)
    # A function marked elementwise is mapped chunk by chunk by the streaming engine; the
    # ``search_sorted`` and ``replace_strict`` expressions make it collect every line first
    # (at 100x 6.6 and 10.3 GB, against 3.0 GB this way for the 2.1 GB result).
    return pl.col(col).map_batches(
        lambda ids: ascending.search_sorted(ids).cast(pl.UInt32),
        return_dtype=pl.UInt32,
        is_elementwise=True,
    )


def compact_lines(lines: pl.LazyFrame, *, extra: Sequence[str] = (), part_lines: int) -> FitLines:
    """``lines`` (business ids) in index space, collected: schema ``FIT_LINES``, then ``extra``.

    ``user_idx``/``item_idx`` are the positions in the returned maps (ascending ids, as
    :func:`id_map` assigns them); ``basket_idx`` is the dense rank of ``basket_id``, so
    baskets group and order as before; ``day`` and ``week`` become Int16. The lines are read
    once for their distinct ids and bounds, then once more, line by line (streaming): the
    Int64 columns of every line are never in memory at once (16 bytes a line instead of 32).
    ``part_lines`` is the returned lines' :attr:`FitLines.part_lines`.

    Raises
    ------
    DataError
        A day or week does not fit Int16.
    """
    _require_int16(lines, (C.DAY, C.WEEK))
    users = _id_map_of(lines, C.USER, C.USER_IDX)
    items = _id_map_of(lines, C.ITEM, C.ITEM_IDX)
    baskets = _id_map_of(lines, C.BASKET, C.BASKET_IDX)
    compact = lines.select(
        _dense_index(C.USER, users.ids).alias(C.USER_IDX),
        _dense_index(C.BASKET, baskets.ids).alias(C.BASKET_IDX),
        pl.col(C.DAY).cast(pl.Int16),
        _dense_index(C.ITEM, items.ids).alias(C.ITEM_IDX),
        pl.col(C.WEEK).cast(pl.Int16),
        *extra,
    ).collect(engine="streaming")
    return FitLines(compact, users, items, len(baskets), part_lines)


def interaction_weights(
    lines: pl.LazyFrame,
    interaction: Interaction,
    *,
    half_life_days: float = 60.0,
    as_of_day: int | None = None,
) -> pl.LazyFrame:
    """One row per (user, item) with its interaction ``weight``.

    Parameters
    ----------
    lines
        Purchases in index space (schema ``FIT_LINES``; plus ``quantity`` for that
        interaction).
    interaction
        ``count``: distinct baskets containing the item; ``quantity``: units bought (a zero
        quantity, e.g. weighed goods, counts as one); ``recency``: each basket counts
        ``0.5 ** (age_days / half_life_days)``, the age measured from ``as_of_day``.
    as_of_day
        Reference day of the recency decay; None = the newest day in ``lines``.

    Returns
    -------
    pl.LazyFrame
        ``user_idx``, ``item_idx``, ``weight`` (Float32, > 0).
    """
    if interaction == "count":
        # One group-by instead of unique + group-by: no copy of every distinct line.
        return lines.group_by(C.USER_IDX, C.ITEM_IDX).agg(
            pl.col(C.BASKET_IDX).n_unique().cast(pl.Float32).alias(WEIGHT)
        )
    if interaction == "quantity":
        per_row = pl.max_horizontal(pl.col(C.QTY), pl.lit(1)).cast(pl.Float64)
    else:
        day = pl.col(C.DAY).cast(pl.Int32)  # Int16 in the fit lines: no overflow on age
        ref = pl.lit(as_of_day, dtype=pl.Int32) if as_of_day is not None else day.max()
        age = (ref - day).clip(lower_bound=0).cast(pl.Float64)
        per_row = pl.lit(0.5).pow(age / half_life_days)
        lines = lines.select(C.USER_IDX, C.ITEM_IDX, C.BASKET_IDX, C.DAY).unique()
    return (
        lines.with_columns(per_row.alias(WEIGHT))
        .group_by(C.USER_IDX, C.ITEM_IDX)
        .agg(pl.col(WEIGHT).sum().cast(pl.Float32))
    )


def to_csr(weights: pl.DataFrame, shape: tuple[int, int], value_col: str = WEIGHT) -> sp.csr_matrix:
    """User x item CSR (float32) of ``weights`` (``user_idx, item_idx, value_col``)."""
    # int64 positions, as scipy got them from ``IdMap.to_idx``: the matrices' index dtypes
    # stay what they were.
    u = weights[C.USER_IDX].to_numpy().astype(np.int64)
    i = weights[C.ITEM_IDX].to_numpy().astype(np.int64)
    data = weights[value_col].to_numpy().astype(np.float32)
    matrix = sp.coo_matrix((data, (u, i)), shape=shape, dtype=np.float32).tocsr()
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
    fit: FitLines,
    interaction: Interaction = "count",
    weighting: Weighting = "none",
    *,
    half_life_days: float = 60.0,
    as_of_day: int | None = None,
    bm25_k1: float = 100.0,
    bm25_b: float = 0.8,
) -> sp.csr_matrix:
    """The weighted user x item CSR matrix of the fit lines (collected in parts of users).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``fit.shape``, float32, row ``user_idx``, column ``item_idx``.
    """
    if as_of_day is None:  # the newest day of every line, not of each part's
        as_of_day = int(fit.lines.select(pl.col(C.DAY).max()).item())
    weights = fit.collect_by(
        C.USER_IDX,
        lambda lines: interaction_weights(
            lines, interaction, half_life_days=half_life_days, as_of_day=as_of_day
        ),
    )
    matrix = to_csr(weights, fit.shape)
    return weighted(matrix, weighting, k1=bm25_k1, b=bm25_b)
