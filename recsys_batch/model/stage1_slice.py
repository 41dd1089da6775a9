"""A shard's slice of the stage-1 model: what one task needs of it, and the users folded in.

:func:`for_users` cuts the model down to a shard's users (what a Dask task receives);
:func:`with_folded_in` adds the users stage 1 was not fit on (``scale.stage1_users``, issue
#28), their parts computed from their own purchases (:mod:`recsys_batch.model.fold_in`)
where the shard is scored.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_batch.config import CandidatesConfig
from recsys_batch.data import columns as C
from recsys_batch.model import fold_in, ids
from recsys_batch.model.candidates import Stage1Model


def _with_user_factors(als: object, user_factors: np.ndarray) -> object:
    """A shallow copy of ``als`` with other user factors (implicit's caches of the old ones
    dropped)."""
    out = copy.copy(als)
    out.user_factors = user_factors  # type: ignore[attr-defined]
    for cache in ("_user_norms", "_XtX"):
        if hasattr(out, cache):
            setattr(out, cache, None)
    return out


def for_users(model: Stage1Model, user_ids: np.ndarray) -> Stage1Model:
    """``model`` knowing only ``user_ids``: what one shard's task needs.

    The per-user parts (ALS user factors, interaction and seed rows, own purchases) are
    sliced; the item-level parts (item factors, co-purchase similarity, popular and trend
    lists) are kept. The candidates of these users are the same as from the whole model, so
    a task can receive its own users' rows instead of everyone's.
    """
    idx = model.users.to_idx(np.asarray(user_ids, dtype=np.int64))
    idx = np.unique(idx[idx >= 0])
    users = ids.IdMap(model.users.ids[idx], model.users.id_col, model.users.idx_col)
    factors = np.asarray(model.als.user_factors)[idx]  # type: ignore[attr-defined]
    return dataclasses.replace(
        model,
        users=users,
        als=_with_user_factors(model.als, factors),
        user_items=model.user_items[idx],
        seeds=model.seeds[idx],
        own=model.own.filter(pl.col(C.USER).is_in(pl.Series(users.ids).implode())),
    )


def merged(model: Stage1Model, other: Stage1Model) -> Stage1Model:
    """One model knowing the users of both (disjoint sets; ``model``'s item-level parts)."""
    both = np.concatenate([model.users.ids, other.users.ids])
    order = np.argsort(both, kind="stable")
    factors = np.vstack(
        [np.asarray(model.als.user_factors), np.asarray(other.als.user_factors)]  # type: ignore[attr-defined]
    )
    return dataclasses.replace(
        model,
        users=ids.IdMap(both[order], model.users.id_col, model.users.idx_col),
        als=_with_user_factors(model.als, factors[order]),
        user_items=sp.vstack([model.user_items, other.user_items], format="csr")[order],
        seeds=sp.vstack([model.seeds, other.seeds], format="csr")[order],
        own=pl.concat([model.own, other.own]),
    )


def with_folded_in(
    model: Stage1Model,
    user_ids: np.ndarray,
    transactions: pl.LazyFrame,
    as_of_week: int,
    catalogue_items: np.ndarray,
    cfg: CandidatesConfig,
) -> Stage1Model:
    """``model`` also knowing the users of ``user_ids`` it was not fit on.

    Their parts come from their own purchases in ``transactions`` before ``as_of_week``
    (the model's cut; :func:`recsys_batch.model.fold_in.folded_users`). Users without one
    stay unknown (the popular list); when every user is known the model is returned as is.
    """
    unknown = np.setdiff1d(np.asarray(user_ids, dtype=np.int64), model.users.ids)
    if unknown.size == 0:
        return model
    lines = transactions.filter(
        pl.col(C.USER).is_in(pl.Series(unknown, dtype=pl.Int64).implode())
        & (pl.col(C.WEEK) < as_of_week)
    )
    folded = fold_in.folded_users(model, lines, catalogue_items, cfg)
    return model if folded is None else merged(model, folded)
