"""Stage 1: candidate generation, a few hundred catalogue items per user.

Five generators each propose ranked items per user (schema ``GENERATED``; their building
blocks are in :mod:`recsys_batch.model.generators`):

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

from recsys_batch.config import CandidatesConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import EmptyStageError
from recsys_batch.model import ids
from recsys_batch.model.generators import (
    copurchase_similarity,
    empty_generated,
    fit_als,
    generated_rows,
    list_candidates,
    own_candidates,
    own_scores,
    popular_items,
    recent_seed_matrix,
    sparse_top_n,
)

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


def fit_lines(transactions: pl.LazyFrame, cfg: CandidatesConfig) -> ids.FitLines:
    """The purchases stage 1 fits on, collected once in index space: returns dropped.

    Schema ``FIT_LINES`` (plus ``quantity`` for that interaction) and the id maps of its
    users and items (:func:`recsys_batch.model.ids.compact_lines`).

    Raises
    ------
    EmptyStageError
        No purchase is left.
    DataError
        A day or week does not fit Int16.
    """
    # Only the "quantity" interaction reads the quantity once returns are dropped; the other
    # interactions leave the column out (8 bytes a line of the biggest frame stage 1 holds).
    extra = [C.QTY] if cfg.als.interaction == "quantity" else []
    purchases = transactions.filter(pl.col(C.QTY) >= 0)
    fit = ids.compact_lines(purchases, extra=extra, part_lines=cfg.fit_part_lines)
    if fit.lines.is_empty():
        msg = "stage 1 got no transactions to fit on"
        raise EmptyStageError(
            msg, column=C.USER, fix="check the split windows and that the data is not empty"
        )
    return fit


def candidate_index(catalogue: pl.LazyFrame, items: ids.IdMap, placeholder_item: int) -> np.ndarray:
    """Sorted indices in ``items`` of the catalogue's items (placeholder left out).

    Raises
    ------
    EmptyStageError
        No catalogue item is among ``items`` (none was bought in the fit window).
    """
    cat_ids = catalogue.select(C.ITEM).unique().collect()
    cat_ids = cat_ids.filter(pl.col(C.ITEM) != placeholder_item)
    cand_idx = items.to_idx(cat_ids[C.ITEM].to_numpy())
    cand_idx = np.sort(cand_idx[cand_idx >= 0])
    if cand_idx.size == 0:
        msg = "no catalogue item was bought in the stage-1 fit window"
        raise EmptyStageError(
            msg, column=C.ITEM, fix="check the catalogue was computed on the same data"
        )
    return cand_idx


def als_matrix(fit: ids.FitLines, cfg: CandidatesConfig, cut_day: int) -> sp.csr_matrix:
    """The weighted user x item matrix ALS is fit on (``als.interaction``, ``als.weighting``)."""
    a = cfg.als
    return ids.user_item_matrix(
        fit,
        a.interaction,
        a.weighting,
        half_life_days=a.recency_half_life_days,
        as_of_day=cut_day,
        bm25_k1=a.bm25_k1,
        bm25_b=a.bm25_b,
    )


def fit_stage1(
    transactions: pl.LazyFrame,
    catalogue: pl.LazyFrame,
    cfg: CandidatesConfig,
    placeholder_item: int,
    *,
    newest: tuple[int, int] | None = None,
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
    newest
        ``(day, week)`` of the newest purchase the recency weights and the trend weeks count
        from; None = of ``transactions``. A fit on a sample of users gets those of every
        user's purchases, as a fit on all of them would.

    Raises
    ------
    EmptyStageError
        No transactions, or no catalogue item among them.
    DataError
        A day or week does not fit Int16.
    """
    start = time.perf_counter()
    fit = fit_lines(transactions, cfg)
    users, items = fit.users, fit.items
    cand_idx = candidate_index(catalogue, items, placeholder_item)
    if newest is None:
        newest = fit.lines.select(pl.col(C.DAY).max(), pl.col(C.WEEK).max()).row(0)
    cut_day = int(newest[0]) + 1
    user_items = als_matrix(fit, cfg, cut_day)
    als = fit_als(user_items, cfg)
    trend_from = int(newest[1]) - cfg.trend_weeks + 1
    model = Stage1Model(
        users=users,
        items=items,
        candidate_items=cand_idx,
        als=als,
        user_items=user_items,
        own=own_scores(fit, cand_idx, cut_day, cfg.own_half_life_days),
        seeds=recent_seed_matrix(fit, cfg.recent_baskets),
        similarity=copurchase_similarity(fit, cand_idx, cfg.copurchase_neighbours, cfg.als.threads),
        popular=popular_items(fit, cand_idx).collect(),
        trend=popular_items(fit, cand_idx, from_week=trend_from).collect(),
        cut_day=cut_day,
    )
    log.info(
        "stage 1 fit: %d users x %d items (%d candidates), %d nnz, %.1fs",
        len(users),
        len(items),
        cand_idx.size,
        user_items.nnz,
        time.perf_counter() - start,
    )
    return model


# --- generators -------------------------------------------------------------------------


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


def _rows_by_id(
    model: Stage1Model, flat: tuple[np.ndarray, np.ndarray, np.ndarray], gen: str
) -> pl.LazyFrame:
    """``GENERATED`` rows of flat ``(user_idx, item_idx, score)`` arrays, as business ids."""
    u, i, s = flat
    if u.size == 0:
        return empty_generated()
    return generated_rows(model.users.to_ids(u), model.items.to_ids(i), s, gen)


def als_candidates(model: Stage1Model, user_ids: np.ndarray, cfg: CandidatesConfig) -> pl.LazyFrame:
    """ALS top ``n_als`` catalogue items per known user (schema ``GENERATED``)."""
    user_idx = _known_user_idx(model, user_ids)
    return _rows_by_id(model, als_recommend(model, user_idx, cfg.n_als, cfg.chunk_users), "als")


def copurchase_candidates(
    model: Stage1Model, user_ids: np.ndarray, cfg: CandidatesConfig
) -> pl.LazyFrame:
    """Items co-bought with those of the user's recent baskets (schema ``GENERATED``)."""
    user_idx = _known_user_idx(model, user_ids)
    flat = sparse_top_n(model.seeds, model.similarity, user_idx, cfg.n_copurchase, cfg.chunk_users)
    return _rows_by_id(model, flat, "copurchase")


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
    own = own_candidates(model.own, users, cfg.n_own).collect().lazy()
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
    # A (user, item) has at most one row per generator, so max/min of the generator's
    # masked column is its value: a plain aggregation, several times faster than
    # ``filter().first()`` per group.
    for g in C.GENERATORS:
        is_g = pl.col(C.GENERATOR) == g
        aggs.append(pl.when(is_g).then(pl.col(C.SCORE)).max().alias(C.score_col(g)))
        aggs.append(pl.when(is_g).then(pl.col(C.RANK)).min().alias(C.rank_col(g)))
    wide = generated.group_by(C.USER, C.ITEM).agg(
        *aggs, pl.len().cast(pl.UInt8).alias(C.N_GENERATORS)
    )
    own_rank = pl.col(C.rank_col("own"))
    # Relative ranks count only the items that are not own purchases (nulls stay null).
    relative = [
        pl.when(own_rank.is_null()).then(pl.col(C.rank_col(g))).rank("ordinal").over(C.USER)
        / max(sizes[g], 1)
        for g in C.GENERATORS
        if g != "own"
    ]
    is_own = own_rank.is_not_null()
    ranked = wide.with_columns(
        pl.when(is_own).then(0).otherwise(1).cast(pl.Int8).alias("_group"),
        pl.when(is_own)
        .then(own_rank.cast(pl.Float64))
        .otherwise(pl.min_horizontal(relative).cast(pl.Float64))
        .alias(_BEST),
    )
    # One sort instead of a ranked struct per user: the order is the capping priority.
    return (
        ranked.sort(
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


def item_factors(model: Stage1Model) -> ids.Factors:
    """ALS factors of the catalogue items (float32)."""
    idx = model.candidate_items
    factors = np.asarray(model.als.item_factors, dtype=np.float32)  # type: ignore[attr-defined]
    catalogue = ids.IdMap(model.items.to_ids(idx), C.ITEM, C.ITEM_IDX)
    return ids.Factors(catalogue, factors[idx])


def user_factors(model: Stage1Model) -> ids.Factors:
    """ALS factors of every user known to the model (float32; not copied)."""
    factors = np.asarray(model.als.user_factors, dtype=np.float32)  # type: ignore[attr-defined]
    return ids.Factors(model.users, factors)


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
