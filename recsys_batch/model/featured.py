"""Stage-1 candidates with their features, for training and scoring alike.

The users stage 1 was not fit on are folded in from their own purchases first
(:mod:`recsys_batch.model.stage1_slice`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.model import candidates as stage1
from recsys_batch.model import stage1_slice
from recsys_batch.model.features import FeatureSet, build_features
from recsys_batch.model.model_data import ModelData


def featured_candidates(
    model: stage1.Stage1Model,
    data: ModelData,
    user_ids: pl.LazyFrame,
    as_of_week: int,
    settings: Settings,
    *,
    fixed_tables: Mapping[str, pl.DataFrame] | None = None,
) -> FeatureSet:
    """Stage-1 candidates of ``user_ids`` with every feature as of ``as_of_week``.

    ``fixed_tables``: feature families computed once elsewhere (``features.family_tables``),
    such as the item features over every user for a shard, whose users see only their own
    purchases; the others are computed from ``data.transactions``.
    """
    users = user_ids.select(pl.col(C.USER).cast(pl.Int64)).unique().collect()
    # Users stage 1 was not fit on (a sample, ``scale.stage1_users``) are folded in from
    # their own purchases here: on the worker that scores their shard (issue #28).
    model = stage1_knowing(model, data, users.lazy(), as_of_week, settings)
    cands = stage1.generate_candidates(model, users.lazy(), settings.candidates)
    return build_features(
        cands,
        data.transactions,
        data.items,
        data.users,
        as_of_week,
        settings.features,
        user_factors=stage1.user_factors(model),
        item_factors=stage1.item_factors(model),
        placeholder_item=settings.prefilter.placeholder_item,
        fixed=fixed_tables,
        plan_tables=data.plans,
    )


def stage1_knowing(
    model: stage1.Stage1Model,
    data: ModelData,
    user_ids: pl.LazyFrame,
    as_of_week: int,
    settings: Settings,
) -> stage1.Stage1Model:
    """``model`` with the users of ``user_ids`` it was not fit on folded in from their
    purchases in ``data`` before ``as_of_week`` (``stage1_slice.with_folded_in``)."""
    users = user_ids.select(pl.col(C.USER).cast(pl.Int64)).unique().collect()[C.USER]
    return stage1_slice.with_folded_in(
        model,
        users.to_numpy(),
        data.transactions,
        as_of_week,
        catalogue_ids(data.catalogue, settings.prefilter.placeholder_item),
        settings.candidates,
    )


def catalogue_ids(catalogue: pl.LazyFrame, placeholder_item: int) -> np.ndarray:
    """Item ids of the catalogue, placeholder left out."""
    return (
        catalogue.select(pl.col(C.ITEM).cast(pl.Int64))
        .filter(pl.col(C.ITEM) != placeholder_item)
        .unique()
        .collect()[C.ITEM]
        .to_numpy()
    )
