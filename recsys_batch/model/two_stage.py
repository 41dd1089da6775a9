"""The two-stage model shared by ``recsys evaluate`` (backtest) and the nightly batch.

Training (``train_two_stage``), for windows ``history | stage-2 window | (test)``:

1. stage 1 is fit on the history (``week < history_end``);
2. candidates are generated for the users seen in the history, features are computed as of
   ``history_end`` (nothing from the stage-2 window), and the target is 1 for the catalogue
   items each user bought in the stage-2 window;
3. LightGBM is trained on that;
4. stage 1 is refit on everything before ``target_end`` for scoring (on a stable sample of at
   most ``scale.stage1_users`` users when there are more).

Scoring (``recommend``) folds the users the refit did not see into stage 1 from their own
purchases (:mod:`recsys_batch.model.fold_in`), generates candidates, computes the same
features as of ``target_end`` and keeps the ranker's top k per user.

Its parts: the data types in :mod:`~recsys_batch.model.model_data`, the featured candidates in
:mod:`~recsys_batch.model.featured`, the training set in :mod:`~recsys_batch.model.training_set`,
saving and loading in :mod:`~recsys_batch.model.persist`.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.frames import distinct_count
from recsys_batch.data.user_hash import sample_users
from recsys_batch.errors import ConfigError, EmptyStageError
from recsys_batch.model import candidates as stage1
from recsys_batch.model import split
from recsys_batch.model.featured import featured_candidates
from recsys_batch.model.model_data import ModelData, TrainedTwoStage
from recsys_batch.model.new_items_ranking import fit_new_items_ranker
from recsys_batch.model.persist import save_model
from recsys_batch.model.ranking import Ranker, fit_ranker, ranking_scores, top_k
from recsys_batch.model.split import Windows
from recsys_batch.model.training_set import (
    fit_history_stage1,
    history_tables,
    stage2_users,
    training_frame,
)

log = logging.getLogger(__name__)


def train_two_stage(data: ModelData, windows: Windows, settings: Settings) -> TrainedTwoStage:
    """Fit stage 1 on history, train the ranker on the stage-2 window, refit stage 1.

    Only ``week < windows.target_end`` of ``data.transactions`` is read; the catalogue must
    have been computed without the test window.
    """
    timings: dict[str, float] = {}
    data = data.with_transactions(split.before_test(data.transactions, windows))

    start = time.perf_counter()
    # The families as of history_end are the same for both rankers: computed once.
    tables = history_tables(data, windows, settings)
    train, feats, history_model = training_frame(data, windows, settings, fixed_tables=tables)
    timings["train_set"] = time.perf_counter() - start

    start = time.perf_counter()
    ranker = fit_ranker(train, feats.feature_names, feats.categorical, settings.ranker)
    timings["ranker_fit"] = time.perf_counter() - start

    new_items_ranker = None
    if wants_new_items_ranker(settings):
        start = time.perf_counter()
        new_items_ranker = fit_new_items_ranker(
            history_model,
            data,
            windows,
            stage2_users(data.transactions, windows),
            settings,
            fixed_tables=tables,
        )
        timings["new_items_ranker"] = time.perf_counter() - start

    start = time.perf_counter()
    scoring_model = fit_scoring_stage1(data, windows, settings)
    timings["stage1_fit_scoring"] = time.perf_counter() - start
    log.info("two-stage trained: %s", {k: round(v, 1) for k, v in timings.items()})
    return TrainedTwoStage(
        stage1_for_scoring=scoring_model,
        ranker=ranker,
        feature_names=feats.feature_names,
        windows=windows,
        timings=timings,
        train_rows=ranker.train_rows,
        forward_plan_features=data.plans is not None,
        new_items_ranker=new_items_ranker,
    )


def wants_new_items_ranker(settings: Settings) -> bool:
    """Whether training fits a new-items ranker: a list is published and ranked by its own."""
    return settings.publish.new_items > 0 and settings.new_items.own_ranker


def fit_scoring_stage1(
    data: ModelData, windows: Windows, settings: Settings, *, n_users: int | None = None
) -> stage1.Stage1Model:
    """Stage 1 for scoring: fit on the purchases before ``windows.target_end``.

    Of a stable hash sample of at most ``scale.stage1_users`` users
    (``user_hash.sample_users``, nested with the ranker's sample) when there are more; the
    others are folded in when they are scored (:func:`featured_candidates`), so the fit's
    memory stops growing with the customers. ``n_users``: the users of
    ``data.transactions`` when known (else counted in one streaming pass).

    Raises
    ------
    ConfigError
        A sample is needed but ``candidates.als.weighting`` is not ``none``.
    """
    tx = split.before_test(data.transactions, windows)
    cap = settings.scale.stage1_users
    placeholder = settings.prefilter.placeholder_item
    if cap is None:
        return stage1.fit_stage1(tx, data.catalogue, settings.candidates, placeholder)
    if n_users is None:
        n_users = int(distinct_count(tx, C.USER, "users").collect(engine="streaming").item())
    sample = sample_users(tx, n_users, cap)
    if sample is tx:
        return stage1.fit_stage1(tx, data.catalogue, settings.candidates, placeholder)
    if settings.candidates.als.weighting != "none":
        msg = (
            f"scale.stage1_users ({cap}) is below the {n_users} users, and folding users into "
            f"stage 1 needs candidates.als.weighting = none (got "
            f"{settings.candidates.als.weighting!r}); fix: set candidates.als.weighting = none "
            "or raise scale.stage1_users"
        )
        raise ConfigError(msg)
    log.info("stage 1: fit on a stable sample of ~%d of %d users, others folded in", cap, n_users)
    return stage1.fit_stage1(
        sample,
        data.catalogue,
        settings.candidates,
        placeholder,
        newest=newest_purchase(tx),
    )


def newest_purchase(transactions: pl.LazyFrame) -> tuple[int, int]:
    """``(day, week)`` of the newest purchase (returns left out), in one streaming pass."""
    newest = (
        transactions.filter(pl.col(C.QTY) >= 0)
        .select(pl.col(C.DAY).max(), pl.col(C.WEEK).max())
        .collect(engine="streaming")
    )
    day, week = newest.row(0)
    if day is None:
        msg = "stage 1 got no transactions to fit on"
        raise EmptyStageError(
            msg, column=C.USER, fix="check the split windows and that the data is not empty"
        )
    return int(day), int(week)


def fit_newest_new_items_ranker(
    data: ModelData, windows: Windows, settings: Settings
) -> Ranker | None:
    """The new-items ranker on the stage-2 window of ``windows``, with its own stage 1 fit
    on the history (None when no list is ranked by its own ranker)."""
    if not wants_new_items_ranker(settings):
        return None
    data = data.with_transactions(split.before_test(data.transactions, windows))
    return fit_new_items_ranker(
        fit_history_stage1(data, windows, settings),
        data,
        windows,
        stage2_users(data.transactions, windows),
        settings,
        fixed_tables=history_tables(data, windows, settings),
    )


@dataclasses.dataclass(frozen=True)
class ServingParts:
    """What the served model fits whatever the gate's ranker is: stage 1 refit on everything
    before the cut and the new-items ranker trained on the newest weeks."""

    stage1_for_scoring: stage1.Stage1Model
    new_items_ranker: Ranker | None
    timings: dict[str, float]


def fit_serving_parts(
    data: ModelData,
    windows: Windows,
    settings: Settings,
    *,
    n_users: int | None = None,
    new_items_data: ModelData | None = None,
) -> ServingParts:
    """Stage 1 for scoring and the new-items ranker of :func:`with_gated_ranker`.

    Neither reads the gate's model, so the nightly fits them beside the gate's backtest.
    The gate measures the main list only, and a new-items ranker whose targets end 4 weeks
    before the cut it scores hits 0.4-0.8 points less often than the one the backtest
    measures (whose targets end at its cut; docs/candidates.md): so that one is trained on
    ``windows``' stage-2 window, over ``new_items_data`` (a sample of the users; default
    ``data``).
    """
    start = time.perf_counter()
    new_items_ranker = fit_newest_new_items_ranker(new_items_data or data, windows, settings)
    new_items_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scoring_model = fit_scoring_stage1(data, windows, settings, n_users=n_users)
    seconds = time.perf_counter() - start
    log.info("two-stage: stage 1 refit for scoring in %.1fs", seconds)
    return ServingParts(
        scoring_model,
        new_items_ranker,
        {"new_items_ranker": new_items_seconds, "stage1_fit_scoring": seconds},
    )


def with_gated_ranker(
    gated: TrainedTwoStage, parts: ServingParts, windows: Windows
) -> TrainedTwoStage:
    """The gate's ranker with ``parts`` (:func:`fit_serving_parts` on ``windows``).

    The ranker measured by the backtest is the one that scores: only stage 1 (which must
    know the newest purchases and every user) is fit again. Features are computed as of
    ``windows.target_end`` at scoring, as for a freshly trained model.
    """
    trained_on = gated.ranker_windows or gated.windows
    log.info(
        "two-stage: scoring with the gate's ranker (targets: weeks %d-%d)",
        trained_on.history_end,
        trained_on.target_end - 1,
    )
    return TrainedTwoStage(
        stage1_for_scoring=parts.stage1_for_scoring,
        ranker=gated.ranker,
        feature_names=gated.feature_names,
        windows=windows,
        timings=dict(parts.timings),
        train_rows=gated.train_rows,
        ranker_windows=trained_on,
        forward_plan_features=gated.forward_plan_features,
        new_items_ranker=parts.new_items_ranker,
    )


def rank_candidates(
    model: TrainedTwoStage, data: ModelData, user_ids: pl.LazyFrame, settings: Settings, k: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Top ``k`` per user and the featured candidates they were ranked from.

    Returns
    -------
    tuple
        ``(recommendations, candidates)``: recommendations with schema ``RECOMMENDATIONS``;
        candidates as generated by stage 1 (schema ``CANDIDATES``), for candidate recall.
    """
    windows = model.windows
    data = scoring_data(
        model, data.with_transactions(split.before_test(data.transactions, windows))
    )
    feats = featured_candidates(
        model.stage1_for_scoring, data, user_ids, windows.target_end, settings
    )
    allowed = data.catalogue.select(C.ITEM).filter(
        pl.col(C.ITEM) != settings.prefilter.placeholder_item
    )
    frame = feats.frame.join(allowed, on=C.ITEM, how="semi").collect()
    scored = ranking_scores(model.ranker, frame, settings.ranker)
    recs = top_k(scored.lazy(), k).collect()
    return recs, frame.select(C.CANDIDATES.names())


def scoring_data(model: TrainedTwoStage, data: ModelData) -> ModelData:
    """``data`` with the plan tables exactly when ``model`` reads the plan features.

    Raises
    ------
    ValueError
        The model reads them and ``data`` has none (a run must decide once, for training
        and scoring alike).
    """
    if not model.forward_plan_features:
        return dataclasses.replace(data, plans=None)
    if data.plans is None:
        msg = "the model reads the forward plan features but the scoring data has no plan tables"
        raise ValueError(msg)
    return data


def recommend(
    model: TrainedTwoStage, data: ModelData, user_ids: pl.LazyFrame, settings: Settings
) -> pl.DataFrame:
    """Top ``settings.ranker.top_k`` catalogue items per user, best first (``RECOMMENDATIONS``).

    All users at once: the reference the sharded scoring of the nightly batch must equal.
    Features are computed as of ``model.windows.target_end``; users unknown to stage 1 get
    the popular candidates, ranked by the same model.
    """
    recs, _ = rank_candidates(model, data, user_ids, settings, settings.ranker.top_k)
    return recs


def popular_fallback(tx: pl.LazyFrame, catalogue: pl.LazyFrame, k: int) -> list[int]:
    """The ``k`` catalogue items with the most distinct buyers in ``tx`` (ties: lower id)."""
    return (
        tx.join(catalogue.select(C.ITEM), on=C.ITEM, how="semi")
        .group_by(C.ITEM)
        .agg(pl.col(C.USER).n_unique().alias(C.BUYERS))
        .sort([C.BUYERS, C.ITEM], descending=[True, False])
        .head(k)
        .collect()[C.ITEM]
        .to_list()
    )


__all__ = ["ModelData", "TrainedTwoStage", "featured_candidates", "save_model"]  # re-exported: run/
