"""Stage 1: candidate generation, a few hundred catalogue items per user.

Five generators each propose ranked items per user (schema ``GENERATED``):

``als``
    implicit's ``AlternatingLeastSquares`` top-N over the catalogue, batched over arrays of
    user indices in chunks of ``chunk_users`` (never a Python loop over users).
``own``
    The user's own catalogue purchases ranked by recency-weighted frequency: repeat purchases
    are the strongest signal in grocery.
``copurchase``
    Items bought in the same baskets as the items of the user's last ``recent_baskets``
    baskets (cosine similarity of item basket-vectors, top ``copurchase_neighbours`` per item).
``popular`` / ``trend``
    The catalogue items with the most buyers over the whole fit window / the last
    ``trend_weeks`` weeks.

:func:`generate_candidates` unions them per user (schema ``CANDIDATES``: every generator's
score and rank side by side) and caps the union at ``max_per_user``: own purchases first,
then by the best *relative* rank (rank / generator size) over the generators, so every
generator keeps a proportional share. Users unknown to the model get the popular list.

The placeholder item (non-catalogue purchases) is part of the ALS matrix, because it carries
basket-size signal, but it is never proposed.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_info, threadpool_limits

from recsys_batch.config import CandidatesConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import EmptyStageError
from recsys_batch.model import ids

log = logging.getLogger(__name__)

_BEST = "_best"


@dataclass
class Stage1Model:
    """Everything :func:`generate_candidates` needs; picklable (:func:`save_stage1`)."""

    users: ids.IdMap
    """Users seen in the fit transactions (rows of ``user_items``)."""
    items: ids.IdMap
    """Every item of the fit transactions, placeholder included (columns)."""
    candidate_items: np.ndarray
    """Indices (into ``items``) of the catalogue items that may be proposed."""
    als: object
    """Fitted ``implicit.cpu.als.AlternatingLeastSquares``."""
    user_items: sp.csr_matrix
    """Weighted user x item matrix the ALS was fit on."""
    own: pl.DataFrame
    """``user_id, item_id, score``: recency-weighted purchase count of catalogue items."""
    seeds: sp.csr_matrix
    """User x item counts of the user's last baskets (co-purchase seeds)."""
    similarity: sp.csr_matrix
    """Item x item co-purchase similarity (catalogue items only, zero diagonal)."""
    popular: pl.DataFrame
    """``item_id, score``: catalogue items by buyers over the fit window, best first."""
    trend: pl.DataFrame
    """``item_id, score``: catalogue items by buyers in the last weeks, best first."""
    cut_day: int
    """First day after the fit transactions (recency reference)."""

    @property
    def n_users(self) -> int:
        """Users known to the model."""
        return len(self.users)


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
    age = (pl.lit(cut_day) - pl.col(C.DAY)).clip(lower_bound=0).cast(pl.Float64)
    return pl.lit(0.5).pow(age / half_life_days)


def own_scores(
    transactions: pl.LazyFrame, candidate_ids: pl.LazyFrame, cut_day: int, half_life_days: float
) -> pl.LazyFrame:
    """Recency-weighted count of baskets per (user, catalogue item): ``user_id, item_id, score``."""
    weight = recency_weight(cut_day, half_life_days)
    return (
        # Filter before de-duplicating: the placeholder's lines (half of them) never reach
        # the hash table of ``unique``.
        transactions.join(candidate_ids, on=C.ITEM, how="semi")
        .select(C.USER, C.ITEM, C.BASKET, C.DAY)
        .unique()
        .group_by(C.USER, C.ITEM)
        .agg(weight.sum().cast(pl.Float32).alias(C.SCORE))
    )


def popular_items(transactions: pl.LazyFrame, candidate_ids: pl.LazyFrame) -> pl.LazyFrame:
    """Catalogue items by distinct buyers, best first (``item_id, score``); ties by item id."""
    return (
        transactions.join(candidate_ids, on=C.ITEM, how="semi")
        .group_by(C.ITEM)
        .agg(pl.col(C.USER).n_unique().cast(pl.Float32).alias(C.SCORE))
        .sort([C.SCORE, C.ITEM], descending=[True, False])
    )


def recent_seed_matrix(
    transactions: pl.LazyFrame, users: ids.IdMap, items: ids.IdMap, recent_baskets: int
) -> sp.csr_matrix:
    """User x item count of each item over the user's last ``recent_baskets`` baskets."""
    baskets = (
        transactions.select(C.USER, C.BASKET, C.DAY)
        .group_by(C.USER, C.BASKET)
        .agg(pl.col(C.DAY).max())
        .with_columns(
            pl.struct(pl.col(C.DAY), pl.col(C.BASKET))
            .rank("ordinal", descending=True)
            .over(C.USER)
            .alias("_recent")
        )
        .filter(pl.col("_recent") <= recent_baskets)
        .select(C.USER, C.BASKET)
    )
    seeds = (
        transactions.join(baskets, on=[C.USER, C.BASKET], how="semi")
        .select(C.USER, C.BASKET, C.ITEM)
        .unique()
        .group_by(C.USER, C.ITEM)
        .agg(pl.len().cast(pl.Float32).alias(ids.WEIGHT))
        .collect()
    )
    return ids.to_csr(seeds, users, items)


def copurchase_similarity(
    transactions: pl.LazyFrame, items: ids.IdMap, candidate_items: np.ndarray, neighbours: int
) -> sp.csr_matrix:
    """Item x item cosine similarity of basket co-occurrence, top ``neighbours`` per row.

    Only catalogue items take part (the placeholder would co-occur with everything).
    """
    allowed = items.frame().filter(
        pl.col(C.ITEM_IDX).is_in(pl.Series(candidate_items, dtype=pl.Int32).implode())
    )
    lines = (
        transactions.join(allowed.lazy(), on=C.ITEM)
        .select(C.BASKET, C.ITEM_IDX)
        .unique()
        .select((pl.col(C.BASKET).rank("dense") - 1).cast(pl.Int64).alias("_b"), pl.col(C.ITEM_IDX))
        .collect()
    )
    n_baskets = int(lines.select(pl.col("_b").max()).item() or 0) + 1 if lines.height else 0
    baskets = sp.csr_matrix(
        (
            np.ones(lines.height, dtype=np.float32),
            (lines["_b"].to_numpy(), lines[C.ITEM_IDX].to_numpy()),
        ),
        shape=(n_baskets, len(items)),
    )
    co = (baskets.T @ baskets).tocsr().astype(np.float32)
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


def fit_stage1(
    transactions: pl.LazyFrame,
    catalogue: pl.LazyFrame,
    cfg: CandidatesConfig,
    placeholder_item: int,
) -> Stage1Model:
    """Fit every generator on the purchases before the cut.

    Parameters
    ----------
    transactions
        Catalogue-applied purchases strictly before the cut (schema ``TRANSACTIONS``; items
        outside the catalogue already mapped to ``placeholder_item``).
    catalogue
        The prefilter's catalogue; only its items (never the placeholder) are proposed.
    placeholder_item
        The id non-catalogue purchases were mapped to.

    Raises
    ------
    EmptyStageError
        No transactions, or no catalogue item among them.
    """
    start = time.perf_counter()
    # Only the "quantity" interaction reads the quantity once returns are dropped; leaving the
    # column out saves 8 bytes a line (1.1 GB of the 100x refit's 138M lines).
    kept = [C.USER, C.BASKET, C.DAY, C.ITEM, C.WEEK]
    if cfg.als.interaction == "quantity":
        kept.append(C.QTY)
    tx = transactions.filter(pl.col(C.QTY) >= 0).select(kept).collect()
    if tx.is_empty():
        msg = "stage 1 got no transactions to fit on"
        raise EmptyStageError(
            msg, column=C.USER, fix="check the split windows and that the data is not empty"
        )
    cat_ids = catalogue.select(C.ITEM).unique().collect()
    cat_ids = cat_ids.filter(pl.col(C.ITEM) != placeholder_item)
    users = ids.id_map(tx[C.USER], C.USER, C.USER_IDX)
    items = ids.id_map(tx[C.ITEM], C.ITEM, C.ITEM_IDX)
    cand_idx = items.to_idx(cat_ids[C.ITEM].to_numpy())
    cand_idx = np.sort(cand_idx[cand_idx >= 0])
    if cand_idx.size == 0:
        msg = "no catalogue item was bought in the stage-1 fit window"
        raise EmptyStageError(
            msg, column=C.ITEM, fix="check the catalogue was computed on the same data"
        )
    cut_day = int(tx.select(pl.col(C.DAY).max()).item()) + 1
    lazy = tx.lazy()
    a = cfg.als
    user_items = ids.user_item_matrix(
        lazy,
        users,
        items,
        a.interaction,
        a.weighting,
        half_life_days=a.recency_half_life_days,
        as_of_day=cut_day,
        bm25_k1=a.bm25_k1,
        bm25_b=a.bm25_b,
    )
    als = fit_als(user_items, cfg)
    cat_lazy = cat_ids.lazy()
    own = own_scores(lazy, cat_lazy, cut_day, cfg.own_half_life_days).collect()
    popular = popular_items(lazy, cat_lazy).collect()
    trend_from = int(tx.select(pl.col(C.WEEK).max()).item()) - cfg.trend_weeks + 1
    trend = popular_items(lazy.filter(pl.col(C.WEEK) >= trend_from), cat_lazy).collect()
    seeds = recent_seed_matrix(lazy, users, items, cfg.recent_baskets)
    similarity = copurchase_similarity(lazy, items, cand_idx, cfg.copurchase_neighbours)
    log.info(
        "stage 1 fit: %d users x %d items (%d candidates), %d nnz, %.1fs",
        len(users),
        len(items),
        cand_idx.size,
        user_items.nnz,
        time.perf_counter() - start,
    )
    return Stage1Model(
        users=users,
        items=items,
        candidate_items=cand_idx,
        als=als,
        user_items=user_items,
        own=own,
        seeds=seeds,
        similarity=similarity,
        popular=popular,
        trend=trend,
        cut_day=cut_day,
    )


# --- generators -------------------------------------------------------------------------


def _generated(
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


def _empty_generated() -> pl.LazyFrame:
    return pl.LazyFrame(schema=C.GENERATED)


def _known_user_idx(model: Stage1Model, user_ids: np.ndarray) -> np.ndarray:
    idx = model.users.to_idx(user_ids)
    return np.sort(idx[idx >= 0])


def _non_candidate_items(model: Stage1Model) -> np.ndarray:
    mask = np.ones(len(model.items), dtype=bool)
    mask[model.candidate_items] = False
    return np.flatnonzero(mask)


def als_recommend(
    model: Stage1Model, user_idx: np.ndarray, n: int, chunk_users: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched ALS top-``n`` over the candidate items, in chunks of ``chunk_users``.

    Returns
    -------
    tuple of numpy arrays
        ``(user_idx, item_idx, score)`` flattened, best first within each user; slots that
        no candidate item can fill are dropped.
    """
    n = min(n, int(model.candidate_items.size))
    blocked = _non_candidate_items(model)
    out_u, out_i, out_s = [], [], []
    if n <= 0 or user_idx.size == 0:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32)
    for start in range(0, user_idx.size, max(chunk_users, 1)):
        chunk = user_idx[start : start + chunk_users]
        item_idx, scores = model.als.recommend(  # type: ignore[attr-defined]
            chunk,
            model.user_items[chunk],
            N=n,
            filter_already_liked_items=False,
            filter_items=blocked if blocked.size else None,
        )
        item_idx = np.asarray(item_idx).reshape(chunk.size, -1)
        scores = np.asarray(scores, dtype=np.float32).reshape(chunk.size, -1)
        ok = np.isfinite(scores) & (item_idx >= 0)
        out_u.append(np.repeat(chunk, item_idx.shape[1])[ok.ravel()])
        out_i.append(item_idx[ok])
        out_s.append(scores[ok])
    return np.concatenate(out_u), np.concatenate(out_i), np.concatenate(out_s)


def als_candidates(model: Stage1Model, user_ids: np.ndarray, cfg: CandidatesConfig) -> pl.LazyFrame:
    """ALS top ``n_als`` catalogue items per known user (schema ``GENERATED``)."""
    user_idx = _known_user_idx(model, user_ids)
    u, i, s = als_recommend(model, user_idx, cfg.n_als, cfg.chunk_users)
    if u.size == 0:
        return _empty_generated()
    return _generated(model.users.to_ids(u), model.items.to_ids(i), s, "als")


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


def copurchase_candidates(
    model: Stage1Model, user_ids: np.ndarray, cfg: CandidatesConfig
) -> pl.LazyFrame:
    """Items co-bought with those of the user's recent baskets (schema ``GENERATED``)."""
    user_idx = _known_user_idx(model, user_ids)
    u, i, s = sparse_top_n(
        model.seeds, model.similarity, user_idx, cfg.n_copurchase, cfg.chunk_users
    )
    if u.size == 0:
        return _empty_generated()
    return _generated(model.users.to_ids(u), model.items.to_ids(i), s, "copurchase")


def own_candidates(model: Stage1Model, users: pl.LazyFrame, cfg: CandidatesConfig) -> pl.LazyFrame:
    """The user's own catalogue purchases by recency-weighted frequency (schema ``GENERATED``)."""
    return (
        model.own.lazy()
        .join(users, on=C.USER, how="semi")
        .sort([C.USER, C.SCORE, C.ITEM], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(C.USER).alias(C.RANK))
        .filter(pl.col(C.RANK) <= cfg.n_own)
        .select(
            pl.col(C.USER),
            pl.col(C.ITEM),
            pl.lit("own").alias(C.GENERATOR),
            pl.col(C.SCORE).cast(pl.Float32),
            pl.col(C.RANK),
        )
    )


def list_candidates(
    ranked: pl.DataFrame,
    users: pl.LazyFrame,
    n: int,
    gen: str,
    exclude: pl.LazyFrame | None = None,
    lookahead: int = 0,
) -> pl.LazyFrame:
    """The top ``n`` of a ranked ``item_id, score`` list per user (schema ``GENERATED``).

    Items of ``exclude`` (``user_id, item_id``, at most ``lookahead`` per user) are skipped,
    so every user gets ``n`` items they are not already offered; ranks are 1..n per user.
    """
    pool = ranked.head(n + (lookahead if exclude is not None else 0))
    rows = users.join(pool.lazy(), how="cross")
    if exclude is not None:
        rows = rows.join(exclude, on=[C.USER, C.ITEM], how="anti")
    return (
        rows.sort([C.USER, C.SCORE, C.ITEM], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(C.USER).alias(C.RANK))
        .filter(pl.col(C.RANK) <= n)
        .select(
            pl.col(C.USER),
            pl.col(C.ITEM),
            pl.lit(gen).alias(C.GENERATOR),
            pl.col(C.SCORE).cast(pl.Float32),
            pl.col(C.RANK),
        )
    )


def generated_candidates(
    model: Stage1Model, users: pl.LazyFrame, cfg: CandidatesConfig
) -> pl.LazyFrame:
    """Every generator's rows for ``users`` (schema ``GENERATED``), before the union.

    ``popular`` and ``trend`` skip the items the user already gets from ``own`` (the same
    list for everyone would otherwise spend its slots on them). Users unknown to the model
    get the popular rows only.
    """
    users = users.select(pl.col(C.USER).cast(pl.Int64)).drop_nulls().unique()
    user_ids = users.collect()[C.USER].to_numpy()
    users = pl.DataFrame({C.USER: user_ids}).lazy()
    own = own_candidates(model, users, cfg).collect().lazy()
    own_pairs = own.select(C.USER, C.ITEM)
    known = users.join(model.users.frame().lazy(), on=C.USER, how="semi")
    parts = [
        als_candidates(model, user_ids, cfg),
        own,
        copurchase_candidates(model, user_ids, cfg),
        list_candidates(model.popular, users, cfg.n_popular, "popular", own_pairs, cfg.n_own),
        list_candidates(model.trend, known, cfg.n_trend, "trend", own_pairs, cfg.n_own),
    ]
    return pl.concat([p.select(C.GENERATED.names()).cast(C.GENERATED) for p in parts])


def generator_sizes(cfg: CandidatesConfig) -> dict[str, int]:
    """Configured number of items per user of each generator."""
    return {
        "als": cfg.n_als,
        "own": cfg.n_own,
        "copurchase": cfg.n_copurchase,
        "popular": cfg.n_popular,
        "trend": cfg.n_trend,
    }


def union_candidates(generated: pl.LazyFrame, cfg: CandidatesConfig) -> pl.LazyFrame:
    """Union per user (schema ``CANDIDATES``), capped at ``max_per_user``.

    Priority when capping: the user's own purchases first, by their own rank (in grocery a
    past purchase is bought again far more often than any new item is discovered); then the
    other items by their best *relative new rank*: an item's rank among the generator's
    items that are not own purchases, divided by the generator's configured size, so the
    generators share the remaining slots in proportion to their sizes. Ties: more
    generators first, then the item id.
    """
    sizes = generator_sizes(cfg)
    aggs: list[pl.Expr] = []
    for g in C.GENERATORS:
        is_g = pl.col(C.GENERATOR) == g
        aggs.append(pl.col(C.SCORE).filter(is_g).first().alias(C.score_col(g)))
        aggs.append(pl.col(C.RANK).filter(is_g).first().alias(C.rank_col(g)))
    wide = generated.group_by(C.USER, C.ITEM).agg(
        *aggs, pl.col(C.GENERATOR).n_unique().cast(pl.UInt8).alias(C.N_GENERATORS)
    )
    own_rank = pl.col(C.rank_col("own"))
    own_rows = wide.filter(own_rank.is_not_null()).with_columns(
        pl.lit(0, dtype=pl.Int8).alias("_group"), own_rank.cast(pl.Float64).alias(_BEST)
    )
    relative = [
        pl.col(C.rank_col(g)).rank("ordinal").over(C.USER) / max(sizes[g], 1)
        for g in C.GENERATORS
        if g != "own"
    ]
    other_rows = wide.filter(own_rank.is_null()).with_columns(
        pl.lit(1, dtype=pl.Int8).alias("_group"),
        pl.min_horizontal(relative).cast(pl.Float64).alias(_BEST),
    )
    # One sort instead of a ranked struct per user: the order is the capping priority.
    return (
        pl.concat([own_rows, other_rows])
        .sort(
            [C.USER, "_group", _BEST, C.N_GENERATORS, C.ITEM],
            descending=[False, False, False, True, False],
        )
        .filter(pl.int_range(pl.len()).over(C.USER) < cfg.max_per_user)
        .select(C.CANDIDATES.names())
        .cast(C.CANDIDATES)
    )


def generate_candidates(
    model: Stage1Model, users: pl.LazyFrame, cfg: CandidatesConfig
) -> pl.LazyFrame:
    """Candidates of ``users`` (one ``user_id`` column): schema ``CANDIDATES``.

    One row per (user, item) with every generator's score and rank (null when that
    generator did not propose the item) and ``n_generators``; at most ``max_per_user`` rows
    per user, ordered by the capping priority. Users unknown to the model get the popular
    list.

    Users are processed in chunks of ``chunk_users`` (generators and union alike), so the
    intermediate rows, several times the output, never exceed one chunk's worth; the
    result is sorted by user, then capping priority.
    """
    start = time.perf_counter()
    user_ids = (
        users.select(pl.col(C.USER).cast(pl.Int64))
        .drop_nulls()
        .unique()
        .sort(C.USER)
        .collect()[C.USER]
    )
    step = max(cfg.chunk_users, 1)
    parts = [
        union_candidates(
            generated_candidates(model, user_ids.slice(offset, step).to_frame().lazy(), cfg), cfg
        ).collect()
        for offset in range(0, user_ids.len(), step)
    ]
    union = pl.concat(parts) if parts else pl.DataFrame(schema=C.CANDIDATES)
    log.info("stage 1 candidates: %d rows, %.1fs", union.height, time.perf_counter() - start)
    return union.lazy()


# --- exports ----------------------------------------------------------------------------


def _factor_frame(ids_: np.ndarray, factors: np.ndarray, id_col: str) -> pl.DataFrame:
    data: dict[str, object] = {id_col: pl.Series(ids_, dtype=pl.Int64)}
    factors = np.asarray(factors, dtype=np.float32)
    for f in range(factors.shape[1] if factors.ndim == 2 else 0):
        data[f"als_f{f}"] = pl.Series(factors[:, f], dtype=pl.Float32)
    return pl.DataFrame(data)


def item_factors(model: Stage1Model) -> pl.DataFrame:
    """``item_id, als_f0..`` for the catalogue items (float32)."""
    factors = np.asarray(model.als.item_factors)  # type: ignore[attr-defined]
    idx = model.candidate_items
    return _factor_frame(model.items.to_ids(idx), factors[idx], C.ITEM)


def user_factors(model: Stage1Model) -> pl.DataFrame:
    """``user_id, als_f0..`` for every user known to the model (float32)."""
    factors = np.asarray(model.als.user_factors)  # type: ignore[attr-defined]
    return _factor_frame(model.users.ids, factors, C.USER)


def save_stage1(model: Stage1Model, path: Path) -> None:
    """Pickle the model to ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)


def load_stage1(path: Path) -> Stage1Model:
    """Load a model written by :func:`save_stage1`."""
    with Path(path).open("rb") as fh:
        model = pickle.load(fh)  # noqa: S301 - our own run folder
    if not isinstance(model, Stage1Model):
        msg = f"{path} does not hold a Stage1Model"
        raise TypeError(msg)
    return model
