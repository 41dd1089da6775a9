"""The stage-1 generators' building blocks, on frames, matrices and arrays.

:mod:`recsys_batch.model.candidates` fits them into a ``Stage1Model`` and calls them per
chunk of users. Each generator's rows have schema ``GENERATED`` (``user_id, item_id,
generator, score, rank``), best first within each user:

``als``
    :func:`fit_als` (implicit's ``AlternatingLeastSquares`` with BLAS held to one thread).
``own``
    :func:`own_scores` (recency-weighted basket count) and :func:`own_candidates`.
``copurchase``
    :func:`recent_seed_matrix` (the user's last baskets) times
    :func:`copurchase_similarity` (item x item cosine), top-n by :func:`sparse_top_n`.
``popular`` / ``trend``
    :func:`popular_items` (distinct buyers) and :func:`list_candidates`.

The fitting functions read the fit lines in index space (``ids.FitLines``: dense UInt32
users, items and baskets); only their outputs carry business ids again.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_info, threadpool_limits

from recsys_batch.config import CandidatesConfig
from recsys_batch.data import columns as C
from recsys_batch.model import ids

log = logging.getLogger(__name__)


# --- fitting ----------------------------------------------------------------------------


def _blas_threads() -> int:
    return max(
        (api.get("num_threads", 1) for api in threadpool_info() if api["user_api"] == "blas"),
        default=1,
    )


def fit_als(user_items: sp.csr_matrix, cfg: CandidatesConfig) -> object:
    """Fit implicit's CPU ALS on a weighted user x item matrix (float32, seeded).

    BLAS is limited to one thread during the fit, as implicit recommends: its own threads
    (``als.threads``) do the parallel work and a BLAS thread pool on top thrashes.
    """
    from implicit.cpu.als import AlternatingLeastSquares  # noqa: PLC0415

    a = cfg.als
    blas = _blas_threads()
    if blas > 1:
        log.warning(
            "BLAS is configured with %d threads; limiting it to 1 during the ALS fit "
            "(set OPENBLAS_NUM_THREADS=1 / MKL_NUM_THREADS=1 to start that way)",
            blas,
        )
    # implicit checks the BLAS threads when the model is built, so build it inside too.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=a.factors,
            regularization=a.regularization,
            alpha=a.alpha,
            iterations=a.iterations,
            num_threads=a.threads,
            random_state=a.seed,
            dtype=np.float32,
        )
        model.fit(user_items, show_progress=False)
    return model


def recency_weight(cut_day: int, half_life_days: float) -> pl.Expr:
    """Weight of one basket line: ``0.5 ** ((cut_day - day) / half_life_days)``."""
    # Int32: the fit lines' day is Int16, and cut_day may be one past its range.
    age = (pl.lit(cut_day, dtype=pl.Int32) - pl.col(C.DAY).cast(pl.Int32)).clip(lower_bound=0)
    return pl.lit(0.5).pow(age.cast(pl.Float64) / half_life_days)


def is_candidate(candidate_items: np.ndarray) -> pl.Expr:
    """Whether a line's ``item_idx`` is among ``candidate_items`` (the catalogue's indices)."""
    return pl.col(C.ITEM_IDX).is_in(pl.Series(candidate_items, dtype=pl.UInt32).implode())


def own_scores(
    fit: ids.FitLines, candidate_items: np.ndarray, cut_day: int, half_life_days: float
) -> pl.DataFrame:
    """Recency-weighted count of baskets per (user, catalogue item): ``user_id, item_id, score``.

    Collected in parts of users (:meth:`~recsys_batch.model.ids.FitLines.collect_by`).
    """
    weight = recency_weight(cut_day, half_life_days)

    def scores(lines: pl.LazyFrame) -> pl.LazyFrame:
        return (
            # Filter before de-duplicating: the placeholder's lines (half of them) never reach
            # the hash table of ``unique``.
            lines.filter(is_candidate(candidate_items))
            .select(C.USER_IDX, C.ITEM_IDX, C.BASKET_IDX, C.DAY)
            .unique()
            .group_by(C.USER_IDX, C.ITEM_IDX)
            .agg(weight.sum().cast(pl.Float32).alias(C.SCORE))
            .select(
                fit.users.id_of(pl.col(C.USER_IDX)), fit.items.id_of(pl.col(C.ITEM_IDX)), C.SCORE
            )
        )

    return fit.collect_by(C.USER_IDX, scores)


def popular_items(
    fit: ids.FitLines, candidate_items: np.ndarray, from_week: int | None = None
) -> pl.LazyFrame:
    """Catalogue items by distinct buyers, best first (``item_id, score``); ties by item id.

    Only the weeks from ``from_week`` on count (all of them when None).
    """
    lines = fit.lines.lazy()
    if from_week is not None:
        lines = lines.filter(pl.col(C.WEEK) >= from_week)
    return (
        lines.filter(is_candidate(candidate_items))
        .group_by(C.ITEM_IDX)
        .agg(pl.col(C.USER_IDX).n_unique().cast(pl.Float32).alias(C.SCORE))
        .sort([C.SCORE, C.ITEM_IDX], descending=[True, False])
        .select(fit.items.id_of(pl.col(C.ITEM_IDX)), C.SCORE)
    )


def recent_seed_matrix(fit: ids.FitLines, recent_baskets: int) -> sp.csr_matrix:
    """User x item count of each item over the user's last ``recent_baskets`` baskets.

    Baskets of the same day: the higher ``basket_idx`` (i.e. basket id) is the later one.
    Collected in parts of users (:meth:`~recsys_batch.model.ids.FitLines.collect_by`).
    """

    def seeds(lines: pl.LazyFrame) -> pl.LazyFrame:
        baskets = (
            lines.select(C.USER_IDX, C.BASKET_IDX, C.DAY)
            .group_by(C.USER_IDX, C.BASKET_IDX)
            .agg(pl.col(C.DAY).max())
            .with_columns(
                pl.struct(pl.col(C.DAY), pl.col(C.BASKET_IDX))
                .rank("ordinal", descending=True)
                .over(C.USER_IDX)
                .alias("_recent")
            )
            .filter(pl.col("_recent") <= recent_baskets)
            .select(C.USER_IDX, C.BASKET_IDX)
        )
        return (
            lines.join(baskets, on=[C.USER_IDX, C.BASKET_IDX], how="semi")
            .select(C.USER_IDX, C.BASKET_IDX, C.ITEM_IDX)
            .unique()
            .group_by(C.USER_IDX, C.ITEM_IDX)
            .agg(pl.len().cast(pl.Float32).alias(ids.WEIGHT))
        )

    return ids.to_csr(fit.collect_by(C.USER_IDX, seeds), fit.shape)


def co_occurrence(baskets: sp.csr_matrix, threads: int = 0) -> sp.csr_matrix:
    """``baskets.T @ baskets`` (item x item counts), summed over blocks of baskets computed
    in ``threads`` threads (0: one per core).

    scipy's sparse product runs on one core but releases the GIL, so blocks run in
    parallel. The counts are whole numbers, exact in float32 up to 2**24 per item pair, so
    the sum does not depend on the blocks.
    """
    n_blocks = max(1, min(threads or len(os.sched_getaffinity(0)), baskets.shape[0]))
    bounds = np.linspace(0, baskets.shape[0], n_blocks + 1).astype(np.int64)

    def block(i: int) -> sp.csr_matrix:
        rows = baskets[bounds[i] : bounds[i + 1]]
        return (rows.T @ rows).tocsr()

    if n_blocks == 1:
        return block(0)
    with ThreadPoolExecutor(n_blocks) as pool:
        blocks = list(pool.map(block, range(n_blocks)))
    return functools.reduce(operator.add, blocks).tocsr()


def copurchase_similarity(
    fit: ids.FitLines, candidate_items: np.ndarray, neighbours: int, threads: int = 0
) -> sp.csr_matrix:
    """Item x item cosine similarity of basket co-occurrence, top ``neighbours`` per row.

    Only catalogue items take part (the placeholder would co-occur with everything). The
    basket x item pairs are collected in parts of baskets; the product runs in ``threads``
    threads (:func:`co_occurrence`).
    """
    pairs = fit.collect_by(
        C.BASKET_IDX,
        lambda lines: (
            lines.filter(is_candidate(candidate_items))
            .select(C.BASKET_IDX, C.ITEM_IDX)
            .unique()
            .sort(C.BASKET_IDX, C.ITEM_IDX)
        ),
    )
    # The parts are ascending ranges of baskets, so the pairs are in CSR order: the basket x
    # item matrix is built in place (through a COO it took twice their memory). Baskets
    # without a catalogue item are empty rows and add nothing.
    basket_idx = pairs[C.BASKET_IDX].to_numpy()
    row_starts = np.arange(fit.n_baskets + 1, dtype=basket_idx.dtype)
    baskets = sp.csr_matrix(
        (
            np.ones(pairs.height, dtype=np.float32),
            pairs[C.ITEM_IDX].to_numpy().astype(np.int32),
            np.searchsorted(basket_idx, row_starts),
        ),
        shape=(fit.n_baskets, len(fit.items)),
    )
    del pairs, basket_idx  # not needed for the product (0.8 GB at 100x)
    co = co_occurrence(baskets, threads).astype(np.float32)
    norms = np.sqrt(co.diagonal()).astype(np.float32)
    co.setdiag(0)
    co.eliminate_zeros()
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    sim = sp.diags(inv) @ co @ sp.diags(inv)
    return _top_per_row(sp.csr_matrix(sim, dtype=np.float32), neighbours)


def _top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every row."""
    matrix = matrix.tocsr()
    rows, cols, vals = [], [], []
    for r in range(matrix.shape[0]):  # one pass over items, not users
        start, end = matrix.indptr[r], matrix.indptr[r + 1]
        if end == start:
            continue
        data = matrix.data[start:end]
        idx = matrix.indices[start:end]
        if end - start > k:
            top = np.argpartition(-data, k - 1)[:k]
            data, idx = data[top], idx[top]
        rows.append(np.full(idx.shape[0], r, dtype=np.int64))
        cols.append(idx)
        vals.append(data)
    if not rows:
        return sp.csr_matrix(matrix.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=matrix.shape,
        dtype=np.float32,
    )


# --- rows of GENERATED ------------------------------------------------------------------


def generated_rows(
    user_ids: np.ndarray, item_ids: np.ndarray, scores: np.ndarray, gen: str
) -> pl.LazyFrame:
    """Rows of ``GENERATED`` from flat arrays sorted best first within each user."""
    frame = pl.DataFrame(
        {
            C.USER: pl.Series(user_ids, dtype=pl.Int64),
            C.ITEM: pl.Series(item_ids, dtype=pl.Int64),
            C.GENERATOR: pl.Series([gen], dtype=pl.String).extend_constant(gen, len(user_ids) - 1)
            if len(user_ids)
            else pl.Series([], dtype=pl.String),
            C.SCORE: pl.Series(scores, dtype=pl.Float32),
        }
    )
    return frame.lazy().with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(C.USER).alias(C.RANK)
    )


def empty_generated() -> pl.LazyFrame:
    """No rows, schema ``GENERATED``."""
    return pl.LazyFrame(schema=C.GENERATED)


def top_rows(scored: pl.LazyFrame, n: int, gen: str) -> pl.LazyFrame:
    """The ``n`` best ``user_id, item_id, score`` rows per user (ties by item id), ranked 1..n.

    Schema ``GENERATED`` with ``generator`` = ``gen``.
    """
    return first_rows(
        scored.sort([C.USER, C.SCORE, C.ITEM], descending=[False, True, False]), n, gen
    )


def first_rows(ordered: pl.LazyFrame, n: int, gen: str) -> pl.LazyFrame:
    """The first ``n`` rows of each user of ``ordered`` (best first), ranked 1..n."""
    return (
        ordered.with_columns(
            pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(C.USER).alias(C.RANK)
        )
        .filter(pl.col(C.RANK) <= n)
        .select(
            pl.col(C.USER),
            pl.col(C.ITEM),
            pl.lit(gen).alias(C.GENERATOR),
            pl.col(C.SCORE).cast(pl.Float32),
            pl.col(C.RANK),
        )
    )


# --- proposing ----------------------------------------------------------------------------


def own_candidates(own: pl.DataFrame, users: pl.LazyFrame, n: int) -> pl.LazyFrame:
    """The users' own catalogue purchases (``own``: :func:`own_scores`), top ``n`` each.

    Schema ``GENERATED``.
    """
    return top_rows(own.lazy().join(users, on=C.USER, how="semi"), n, "own")


def list_candidates(
    ranked: pl.DataFrame,
    users: pl.LazyFrame,
    n: int,
    gen: str,
    exclude: pl.LazyFrame | None = None,
    lookahead: int = 0,
) -> pl.LazyFrame:
    """The top ``n`` of a ranked ``item_id, score`` list per user (schema ``GENERATED``).

    ``ranked`` is best first. Items of ``exclude`` (``user_id, item_id``, at most
    ``lookahead`` per user) are skipped, so every user gets ``n`` items they are not already
    offered; ranks are 1..n per user.
    """
    pool = ranked.head(n + (lookahead if exclude is not None else 0)).lazy()
    # Every user's rows come in the list's order, so ranks are positions: no sort.
    rows = users.sort(C.USER).join(pool, how="cross", maintain_order="left_right")
    if exclude is not None:
        rows = rows.join(exclude, on=[C.USER, C.ITEM], how="anti", maintain_order="left")
    return first_rows(rows, n, gen)


def sparse_top_n(
    seeds: sp.csr_matrix,
    similarity: sp.csr_matrix,
    user_idx: np.ndarray,
    n: int,
    chunk_users: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``n`` of ``seeds[user_idx] @ similarity`` per row (positive scores only), chunked."""
    out_u, out_i, out_s = [], [], []
    for start in range(0, user_idx.size, max(chunk_users, 1)):
        chunk = user_idx[start : start + chunk_users]
        scores = (seeds[chunk] @ similarity).toarray().astype(np.float32)
        k = min(n, scores.shape[1])
        if k <= 0:
            continue
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        ok = top_scores > 0
        out_u.append(np.repeat(chunk, k)[ok.ravel()])
        out_i.append(top[ok])
        out_s.append(top_scores[ok])
    if not out_u:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32)
    return np.concatenate(out_u), np.concatenate(out_i), np.concatenate(out_s)
