"""Fold-in: stage 1's per-user parts of users its fit did not see, from their own purchases.

Stage 1 for scoring is fit on a stable sample of at most ``scale.stage1_users`` users
(:func:`recsys_batch.model.two_stage.fit_scoring_stage1`, issue #28). The item-level parts
(item factors, co-purchase similarity, popular and trend lists) come from that fit; every
other user's parts are computed where their shard is scored, from the shard's lines:

ALS factors
    :func:`als_user_factors`: implicit's least-squares step for one user with the item
    factors ``Y`` fixed, what its CPU ``recalculate_user`` computes::

        x_u = (YtY + Yt (C_u - I) Y + reg I)^-1  Yt C_u p_u

    with ``C_u = alpha * (the user's row of the weighted matrix)`` on the user's items (implicit
    takes the scaled matrix value itself as the confidence) and ``p_u`` their indicator.
own purchases, co-purchase seeds, interaction row
    The functions the fit uses (``own_scores``, ``recent_seed_matrix``, ``als_matrix``),
    on the user's lines, in the model's item indices: they depend on the user's lines only.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys_batch.config import CandidatesConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import ConfigError
from recsys_batch.model import ids
from recsys_batch.model.candidates import Stage1Model, als_matrix, fit_lines
from recsys_batch.model.generators import own_scores, recent_seed_matrix

PAD = 32
"""A user's items are padded to a multiple of this many for the batched products: users of
one padded width share a batch, so a user's factors never depend on who else is in it."""
BATCH_USERS = 256
"""Users per batched product and solve (about 8 MB of gathered item factors at 64 factors)."""


def als_user_factors(als: object, user_items: sp.csr_matrix) -> np.ndarray:
    """Each row's ALS factors against the fixed item factors of ``als`` (float32).

    The exact least-squares step of implicit's CPU ALS (``recalculate_user``): confidence
    ``alpha * value``, a negative value the absolute confidence of a dislike, the
    regularisation added to the diagonal as is; an empty row gets zeros. Computed in
    float32 like implicit, in batches of users with the same padded number of items
    (:data:`PAD`): one matrix product builds every ``Yt (C_u - I) Y`` of a batch and one
    batched solve finishes it.

    Parameters
    ----------
    als
        A fitted ``implicit.cpu.als.AlternatingLeastSquares`` (its item factors,
        ``alpha`` and ``regularization`` are read).
    user_items
        Users x items (the model's item indices), the weighted values the fit saw.

    Returns
    -------
    numpy.ndarray
        ``(rows, factors)`` float32.
    """
    item_factors = np.asarray(als.item_factors, dtype=np.float32)  # type: ignore[attr-defined]
    alpha = float(als.alpha)  # type: ignore[attr-defined]
    regularization = np.float32(als.regularization)  # type: ignore[attr-defined]
    n_factors = item_factors.shape[1]
    base = item_factors.T @ item_factors + regularization * np.eye(n_factors, dtype=np.float32)
    matrix = sp.csr_matrix(user_items)
    if not matrix.has_sorted_indices:  # a copy: the caller's matrix is left as it is
        matrix = matrix.sorted_indices()
    confidence = (matrix.data * alpha).astype(np.float32)
    lengths = np.diff(matrix.indptr)
    padded = -(-lengths // PAD) * PAD
    out = np.zeros((matrix.shape[0], n_factors), dtype=np.float32)
    # BLAS threads on products of 64 x 64 only add overhead, and one thread keeps the
    # result the same on every worker.
    with threadpool_limits(1, "blas"):
        for width in np.unique(padded[padded > 0]):
            rows = np.flatnonzero(padded == width)
            for start in range(0, rows.size, BATCH_USERS):
                batch = rows[start : start + BATCH_USERS]
                out[batch] = _solve_batch(item_factors, base, matrix, confidence, batch, int(width))
    return out


def _solve_batch(
    item_factors: np.ndarray,
    base: np.ndarray,
    matrix: sp.csr_matrix,
    confidence: np.ndarray,
    rows: np.ndarray,
    width: int,
) -> np.ndarray:
    """:func:`als_user_factors` of ``rows``, each with at most ``width`` items."""
    starts = matrix.indptr[rows]
    counts = matrix.indptr[rows + 1] - starts
    slots = np.arange(width)
    used = slots[None, :] < counts[:, None]
    at = np.where(used, starts[:, None] + slots[None, :], 0)
    # Padding: item 0 with confidence 1 adds (1 - 1) * y y' = 0 to A and nothing to b.
    conf = np.where(used, confidence[at], np.float32(1.0))
    gathered = np.take(item_factors, np.where(used, matrix.indices[at], 0), axis=0)
    excess = (np.abs(conf) - np.float32(1.0))[:, :, None] * gathered
    lhs = np.matmul(excess.transpose(0, 2, 1), gathered) + base
    liked = np.where(used & (conf > 0), conf, np.float32(0.0))
    rhs = np.matmul(liked[:, None, :], gathered)
    return np.linalg.solve(lhs, rhs.transpose(0, 2, 1))[:, :, 0]


def _in_model_items(
    matrix: sp.csr_matrix, local_items: ids.IdMap, model_items: ids.IdMap
) -> sp.csr_matrix:
    """``matrix`` (columns: ``local_items``) with the model's item columns; items the model
    does not know are dropped (they have no factors and no co-purchase neighbours)."""
    to_model = model_items.to_idx(local_items.ids)
    coo = matrix.tocoo()
    cols = to_model[coo.col]
    known = cols >= 0
    out = sp.csr_matrix(
        (coo.data[known], (coo.row[known], cols[known])),
        shape=(matrix.shape[0], len(model_items)),
        dtype=np.float32,
    )
    out.sort_indices()
    return out


def folded_users(
    model: Stage1Model,
    lines: pl.LazyFrame,
    catalogue_items: np.ndarray,
    cfg: CandidatesConfig,
) -> Stage1Model | None:
    """``model`` knowing only the users of ``lines``, their parts folded in.

    Parameters
    ----------
    model
        The stage-1 model (or a slice of it): its item-level parts are kept.
    lines
        Purchases (schema ``TRANSACTIONS``) of users unknown to ``model``, before the
        model's cut; returns are dropped as the fit drops them.
    catalogue_items
        Item ids the prefilter kept (placeholder excluded): the own-purchase candidates, as
        for a fit that saw these users.

    Returns
    -------
    Stage1Model or None
        None when no purchase is left.

    Raises
    ------
    ConfigError
        ``candidates.als.weighting`` is not ``none``: BM25 and TF-IDF weigh a user's row
        with statistics over every user, which a fold-in does not have.
    """
    if lines.filter(pl.col(C.QTY) >= 0).head(1).collect().is_empty():
        return None
    if cfg.als.weighting != "none":
        msg = (
            f"scale.stage1_users folds users into stage 1, which needs "
            f"candidates.als.weighting = none (got {cfg.als.weighting!r}); "
            "fix: set candidates.als.weighting = none, or scale.stage1_users above the users"
        )
        raise ConfigError(msg)
    fit = fit_lines(lines, cfg)
    user_items = _in_model_items(als_matrix(fit, cfg, model.cut_day), fit.items, model.items)
    catalogue = fit.items.to_idx(np.asarray(catalogue_items, dtype=np.int64))
    own_items = np.sort(catalogue[catalogue >= 0])
    als = copy.copy(model.als)
    als.user_factors = als_user_factors(model.als, user_items)  # type: ignore[attr-defined]
    als._user_norms = None  # type: ignore[attr-defined]  # noqa: SLF001 - implicit's cache
    als._XtX = None  # type: ignore[attr-defined]  # noqa: SLF001 - implicit's cache
    return dataclasses.replace(
        model,
        users=fit.users,
        als=als,
        user_items=user_items,
        own=own_scores(fit, own_items, model.cut_day, cfg.own_half_life_days),
        seeds=_in_model_items(recent_seed_matrix(fit, cfg.recent_baskets), fit.items, model.items),
    )
