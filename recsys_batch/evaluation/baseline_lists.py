"""The baselines' top lists for the backtest users, on the two-stage model's purchases."""

from __future__ import annotations

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.evaluation.baselines import (
    als_baseline,
    copurchase_new_baseline,
    own_purchases_baseline,
    popular_baseline,
)
from recsys_batch.evaluation.protocol import HeldOut
from recsys_batch.evaluation.tifu_knn import tifu_knn_baseline
from recsys_batch.model import split
from recsys_batch.model.featured import stage1_knowing
from recsys_batch.model.model_data import ModelData, TrainedTwoStage
from recsys_batch.model.two_stage import popular_fallback

POPULAR_WEEKS = 4


def baseline_lists(
    data: ModelData,
    users: pl.LazyFrame,
    model: TrainedTwoStage,
    windows: split.Windows,
    settings: Settings,
    held: HeldOut,
) -> dict[str, pl.DataFrame]:
    """Top ``evaluation.curve_k`` lists of the baselines for ``users``.

    ``data.transactions`` holds the purchases before the test window only. Popular is the
    most distinct buyers over the ``POPULAR_WEEKS`` weeks before the test; ALS alone and the
    co-purchase anchor are the scoring stage 1's ALS model and co-purchase scores (fit on
    the same purchases as the two-stage model's; users outside its sample,
    ``scale.stage1_users``, folded in as the two-stage model does); the anchor leaves out
    ``held.bought``.
    """
    k = settings.evaluation.curve_k
    train_tx, catalogue = data.transactions, data.catalogue
    recent = train_tx.filter(pl.col(C.WEEK) >= windows.target_end - POPULAR_WEEKS)
    popular = popular_fallback(recent, catalogue, k)
    half_life = settings.candidates.own_half_life_days
    placeholder = settings.prefilter.placeholder_item
    chunk = settings.candidates.chunk_users
    return {
        "popular": popular_baseline(users, popular, k).collect(),
        "own_purchases": own_purchases_baseline(
            train_tx, catalogue, users, popular, half_life, k
        ).collect(),
        "als": als_baseline(
            stage1_knowing(model.stage1_for_scoring, data, users, windows.target_end, settings),
            users,
            k,
            chunk,
        ).collect(),
        "tifu_knn": tifu_knn_baseline(
            train_tx, catalogue, users, settings.evaluation.tifu_knn, k, placeholder
        ).collect(),
        "copurchase_new": copurchase_new_baseline(
            model.stage1_for_scoring, users, held.bought, k, chunk
        ).collect(),
    }
