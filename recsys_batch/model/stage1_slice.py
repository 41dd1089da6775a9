"""A shard's slice of the stage-1 model: what one Dask task needs of it."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import polars as pl

from recsys_batch.data import columns as C
from recsys_batch.model import ids
from recsys_batch.model.candidates import Stage1Model


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
    als = copy.copy(model.als)
    als.user_factors = np.asarray(model.als.user_factors)[idx]  # type: ignore[attr-defined]
    if hasattr(als, "_user_norms"):
        als._user_norms = None  # noqa: SLF001 - implicit's cache of the old user factors
    return dataclasses.replace(
        model,
        users=users,
        als=als,
        user_items=model.user_items[idx],
        seeds=model.seeds[idx],
        own=model.own.filter(pl.col(C.USER).is_in(pl.Series(users.ids).implode())),
    )
