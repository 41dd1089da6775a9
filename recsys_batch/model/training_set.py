"""The ranker's training set: history candidates, features as of ``history_end``, target.

Windows ``history | stage-2 window | (test)``: stage 1 is fit on the history, the features
see nothing from the stage-2 window, the target is what the users bought in it.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.model import candidates as stage1
from recsys_batch.model import split
from recsys_batch.model.featured import featured_candidates
from recsys_batch.model.features import FeatureSet, family_tables, targets, with_targets
from recsys_batch.model.model_data import ModelData
from recsys_batch.model.ranking import target_spend
from recsys_batch.model.split import Windows


def history_users(tx: pl.LazyFrame, before_week: int) -> pl.LazyFrame:
    """Distinct users with a purchase before ``before_week``."""
    return tx.filter(pl.col(C.WEEK) < before_week).select(C.USER).unique()


def training_frame(
    data: ModelData,
    windows: Windows,
    settings: Settings,
    *,
    fixed_tables: Mapping[str, pl.DataFrame] | None = None,
) -> tuple[pl.LazyFrame, FeatureSet, stage1.Stage1Model]:
    """The ranker's training set: history candidates, features as of ``history_end``, target.

    Stage 1 is fit on the history only; candidates are generated for the users who bought
    something in the stage-2 window and appear in the history (only they can have a
    positive); ``target`` = 1 for the catalogue items they bought in the stage-2 window.

    Returns
    -------
    tuple
        ``(frame, features, history_model)``: the frame (candidates, features, ``target``;
        lazy, so that ``fit_ranker`` materialises it once, already filtered), the feature
        names and the stage-1 model fit on the history.

    ``fixed_tables``: the feature families as of ``history_end`` when computed already
    (:func:`history_tables`, shared with the new-items ranker).
    """
    placeholder = settings.prefilter.placeholder_item
    tx = split.before_test(data.transactions, windows)
    history_model = fit_history_stage1(data.with_transactions(tx), windows, settings)
    target_users = stage2_users(tx, windows)
    feats = featured_candidates(
        history_model,
        data.with_transactions(tx),
        target_users,
        windows.history_end,
        settings,
        fixed_tables=fixed_tables,
    )
    window = split.stage2_window(tx, windows)
    truth = targets(window, placeholder, settings.ranker.max_label)
    train = with_targets(feats.frame, truth)
    if settings.ranker.revenue_weight != 0.0:  # the label's spend, for the training weight
        train = train.join(target_spend(window), on=[C.USER, C.ITEM], how="left")
    return train, feats, history_model


def fit_history_stage1(data: ModelData, windows: Windows, settings: Settings) -> stage1.Stage1Model:
    """Stage 1 fit on the history of ``windows`` (``week < history_end``)."""
    return stage1.fit_stage1(
        split.history(data.transactions, windows),
        data.catalogue,
        settings.candidates,
        settings.prefilter.placeholder_item,
    )


def history_tables(
    data: ModelData, windows: Windows, settings: Settings
) -> dict[str, pl.DataFrame]:
    """Every feature family as of ``history_end`` over ``data``'s purchases before the test."""
    return family_tables(
        split.before_test(data.transactions, windows),
        data.items,
        data.users,
        windows.history_end,
        settings.features,
        settings.prefilter.placeholder_item,
    )


def stage2_users(tx: pl.LazyFrame, windows: Windows) -> pl.LazyFrame:
    """Users with a purchase in the stage-2 window and in the history (the only ones that
    can have a positive)."""
    return (
        split.stage2_window(tx, windows)
        .select(C.USER)
        .unique()
        .join(history_users(tx, windows.history_end), on=C.USER, how="semi")
    )
