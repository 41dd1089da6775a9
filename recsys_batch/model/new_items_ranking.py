"""The new-items list (#26): features, a ranker of first purchases, and the served top n.

Training (:func:`fit_new_items_ranker`), on the windows of the main ranker: new-item
candidates of the stage-2 users from stage 1 fit on the history, "bought" = every purchase
of the history, features as of ``history_end`` (the stage-2 families of
:mod:`recsys_batch.model.features` plus each new-item generator's score and rank); the
target is the same graded label as the main ranker's (distinct days bought in the stage-2
window): a purchase of a candidate there is a first purchase by construction.

Serving (:func:`new_item_recommendations`): the same candidates and features as of the
scoring cut, scored by the new-items ranker (or by the main ranker when
``new_items.own_ranker`` is off), top ``publish.new_items`` per user with the reason of the
generator of best evidence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.model import split
from recsys_batch.model.candidates import Stage1Model, item_factors, user_factors
from recsys_batch.model.featured import stage1_knowing
from recsys_batch.model.features import FeatureSet, build_features, targets, with_targets
from recsys_batch.model.new_items import REASON, new_item_candidates
from recsys_batch.model.ranking import Ranker, fit_ranker, score, top_k

if TYPE_CHECKING:
    from recsys_batch.model.model_data import ModelData, TrainedTwoStage

log = logging.getLogger(__name__)

NEW_ITEMS = pl.Schema({C.USER: pl.Int64, C.ITEM: pl.Int64, C.RANK: pl.Int32, REASON: pl.String})
"""The served list: best first, ranks 1..``publish.new_items``, the reason as text."""


FIRST_BUYERS = "first_buyers"
"""Key of the item first-buyer family in ``fixed_tables`` (a shard: computed over every user)."""


def _first_buyer_partials(
    transactions: pl.LazyFrame, as_of_week: int, recent_weeks: int, placeholder_item: int
) -> pl.LazyFrame:
    """Per item: users whose first purchase is in the recent / previous weeks, and the
    recent buyers (sums over parts of whole users give the totals)."""
    tx = transactions.filter((pl.col(C.WEEK) < as_of_week) & (pl.col(C.ITEM) != placeholder_item))
    recent_from, previous_from = as_of_week - recent_weeks, as_of_week - 2 * recent_weeks
    per_pair = tx.group_by(C.USER, C.ITEM).agg(
        pl.col(C.WEEK).min().alias("_first"), pl.col(C.WEEK).max().alias("_last")
    )
    return per_pair.group_by(C.ITEM).agg(
        (pl.col("_first") >= recent_from).sum().cast(pl.Float32).alias("if_first_recent"),
        pl.col("_first")
        .is_between(previous_from, recent_from, closed="left")
        .sum()
        .cast(pl.Float32)
        .alias("if_first_previous"),
        (pl.col("_last") >= recent_from).sum().cast(pl.Float32).alias("_recent_buyers"),
    )


def first_buyer_items(
    parts: list[pl.LazyFrame], as_of_week: int, recent_weeks: int, placeholder_item: int
) -> pl.DataFrame:
    """Per item, how many users bought it for the first time lately (point in time).

    ``parts`` are transactions of disjoint sets of whole users (one frame: everyone), read
    one at a time. Columns: ``item_id``, ``if_first_recent`` (users whose first purchase of
    the item is in the last ``recent_weeks`` weeks before the cut), ``if_first_previous``
    (the ``recent_weeks`` before those) and ``if_first_share`` (first-time buyers among the
    item's buyers of the recent weeks): an item that keeps winning new buyers is the kind a
    customer buys for the first time, a staple bought by the same people is not.
    """
    partials = [
        _first_buyer_partials(part, as_of_week, recent_weeks, placeholder_item).collect()
        for part in parts
    ]
    return (
        pl.concat(partials)
        .group_by(C.ITEM)
        .agg(pl.col("if_first_recent", "if_first_previous", "_recent_buyers").sum())
        .with_columns(
            (pl.col("if_first_recent") / pl.col("_recent_buyers").clip(1, None))
            .cast(pl.Float32)
            .alias("if_first_share")
        )
        .drop("_recent_buyers")
        .sort(C.ITEM)
    )


def with_first_buyers(feats: FeatureSet, table: pl.DataFrame) -> FeatureSet:
    """``feats`` plus the first-buyer columns of each row's item (0 when none)."""
    names = [c for c in table.columns if c != C.ITEM]
    frame = feats.frame.join(table.lazy(), on=C.ITEM, how="left", maintain_order="left")
    frame = frame.with_columns(pl.col(names).fill_null(0.0))
    return FeatureSet(frame, (*feats.feature_names, *names), feats.categorical)


def featured_new_items(
    model: Stage1Model,
    data: ModelData,
    users: pl.LazyFrame,
    as_of_week: int,
    settings: Settings,
    *,
    fixed_tables: Mapping[str, pl.DataFrame] | None = None,
    item_lists: Mapping[str, pl.DataFrame] | None = None,
) -> tuple[FeatureSet, pl.DataFrame]:
    """New-item candidates of ``users`` with every feature as of ``as_of_week``.

    Returns
    -------
    tuple
        The features (one row per candidate) and ``user_id, item_id, reason``.
    """
    # Users stage 1 was not fit on (a sample, ``scale.stage1_users``) are folded in, as for
    # the main list: else the co-purchase, ALS and category generators skip them (#28).
    model = stage1_knowing(model, data, users, as_of_week, settings)
    cands = new_item_candidates(
        model,
        users,
        data.transactions,
        as_of_week,
        data.items,
        settings.new_items,
        chunk_users=settings.candidates.chunk_users,
        item_lists=item_lists,
    )
    feats = build_features(
        cands.drop(REASON),
        data.transactions,
        data.items,
        data.users,
        as_of_week,
        settings.features,
        user_factors=user_factors(model),
        item_factors=item_factors(model),
        placeholder_item=settings.prefilter.placeholder_item,
        fixed=fixed_tables,
    )
    fixed = fixed_tables or {}
    first = fixed.get(FIRST_BUYERS)
    if first is None:
        first = first_buyer_items(
            [data.transactions],
            as_of_week,
            settings.features.recent_weeks,
            settings.prefilter.placeholder_item,
        )
    return with_first_buyers(feats, first), cands.select(C.USER, C.ITEM, REASON)


def fit_new_items_ranker(
    history_model: Stage1Model,
    data: ModelData,
    windows: split.Windows,
    target_users: pl.LazyFrame,
    settings: Settings,
    *,
    fixed_tables: Mapping[str, pl.DataFrame] | None = None,
    item_lists: Mapping[str, pl.DataFrame] | None = None,
) -> Ranker:
    """LightGBM on the first purchases of the stage-2 window (``data``: before the test).

    ``fixed_tables``: the feature families as of ``history_end``, when computed already
    (the main ranker's, ``training_set.history_tables``). ``item_lists``: the extra generators
    for the stage-2 window (the promotions of its weeks); scoring must then pass the same
    names for the weeks it serves.
    """
    start = time.perf_counter()
    feats, _ = featured_new_items(
        history_model,
        data,
        target_users,
        windows.history_end,
        settings,
        fixed_tables=fixed_tables,
        item_lists=item_lists,
    )
    truth = targets(
        split.stage2_window(data.transactions, windows),
        settings.prefilter.placeholder_item,
        settings.ranker.max_label,
    )
    new_items = settings.new_items
    cfg = settings.ranker.model_copy(
        update={
            "objective": new_items.objective,
            "early_stopping_rounds": new_items.early_stopping_rounds,
            "n_models": new_items.n_models,
        }
    )
    ranker = fit_ranker(
        with_targets(feats.frame, truth), feats.feature_names, feats.categorical, cfg
    )
    log.info("new-items ranker trained in %.1fs", time.perf_counter() - start)
    return ranker


def scored_with(ranker: Ranker, frame: pl.DataFrame) -> pl.DataFrame:
    """``score`` of every row by ``ranker``; its features missing from ``frame`` are null
    (the main ranker's ``own`` and ``popular`` columns on new-item candidates)."""
    missing = [name for name in ranker.feature_names if name not in frame.columns]
    filled = frame.with_columns(pl.lit(None, dtype=pl.Float32).alias(name) for name in missing)
    return score(ranker, filled.lazy())


def new_item_recommendations(
    model: TrainedTwoStage,
    data: ModelData,
    users: pl.LazyFrame,
    settings: Settings,
    *,
    k: int | None = None,
    fixed_tables: Mapping[str, pl.DataFrame] | None = None,
    item_lists: Mapping[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """The top ``k`` (default ``publish.new_items``) never-bought items of each user.

    ``data.transactions`` holds the purchases before ``model.windows.target_end`` (a shard's
    users' rows and the reference row are enough; ``fixed_tables`` then carries the item
    families over every user, as for the main list). Users whose stage 1 knows nothing
    get the trending (and item-list) items.

    Returns
    -------
    polars.DataFrame
        Schema ``NEW_ITEMS``: ``user_id, item_id, rank, reason``, best first.
    """
    k = settings.publish.new_items if k is None else k
    cut = model.windows.target_end
    feats, reasons = featured_new_items(
        model.stage1_for_scoring,
        data,
        users,
        cut,
        settings,
        fixed_tables=fixed_tables,
        item_lists=item_lists,
    )
    ranker = model.new_items_ranker
    if ranker is None or not settings.new_items.own_ranker:
        ranker = model.ranker
    scored = scored_with(ranker, feats.frame.collect())
    return (
        top_k(scored.lazy(), k)
        .join(reasons.lazy(), on=[C.USER, C.ITEM], how="left", maintain_order="left")
        .select(list(NEW_ITEMS))
        .cast(NEW_ITEMS)
        .collect()
    )
