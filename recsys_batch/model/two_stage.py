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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.frames import distinct_count
from recsys_batch.data.user_hash import sample_users
from recsys_batch.errors import ConfigError, EmptyStageError
from recsys_batch.model import candidates as stage1
from recsys_batch.model import split, stage1_slice
from recsys_batch.model.features import (
    FeatureSet,
    build_features,
    family_tables,
    targets,
    with_targets,
)
from recsys_batch.model.new_items_ranking import fit_new_items_ranker
from recsys_batch.model.plan_features import PlanTables
from recsys_batch.model.ranking import (
    Ranker,
    fit_ranker,
    load_ranker,
    ranking_scores,
    save_ranker,
    target_spend,
    top_k,
)
from recsys_batch.model.split import Windows

log = logging.getLogger(__name__)

STAGE1_FILE = "stage1.pkl"
NEW_ITEMS_DIR = "new_items"
"""Sub-folder of a saved model holding the new-items ranker (absent: none)."""
MODEL_META_FILE = "two_stage.json"


@dataclass
class TrainedTwoStage:
    """Stage 1 refit for scoring, the trained ranker, and the windows it was trained on."""

    stage1_for_scoring: stage1.Stage1Model
    ranker: Ranker
    feature_names: tuple[str, ...]
    windows: Windows
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step of the training."""
    train_rows: int = 0
    """Candidate rows the ranker was fit on (users with a positive, after negative sampling)."""
    ranker_windows: Windows | None = None
    """The windows the ranker was trained on when they are not ``windows`` (a ranker reused
    from the quality gate's backtest, :func:`with_gated_ranker`)."""
    forward_plan_features: bool = False
    """Whether the ranker reads the forward-looking plan features (#26): it must then be
    scored with the plan tables of the weeks it scores."""
    new_items_ranker: Ranker | None = None
    """Ranker of the new-items list (first purchases, #26; same windows as ``ranker``);
    None: the list, if any, is ranked by ``ranker``."""

    def importances(self) -> pl.DataFrame:
        """Feature importances (gain) of the ranker, most important first."""
        return self.ranker.importances()


TwoStageModel = TrainedTwoStage


@dataclass(frozen=True)
class ModelData:
    """What the two-stage model reads, passed around as one object."""

    transactions: pl.LazyFrame
    """Catalogue-applied purchases (schema ``TRANSACTIONS``); other items are the placeholder."""
    catalogue: pl.LazyFrame
    """The prefilter's catalogue (schema ``CATALOGUE``)."""
    items: pl.LazyFrame | None = None
    """Product attributes, when the source has them."""
    users: pl.LazyFrame | None = None
    """Household demographics, when the source has them."""
    plans: PlanTables | None = None
    """The plan tables of the weeks scored when the run uses the forward-looking plan
    features (``plan_features.forward_decision``); None: it does not."""

    def with_transactions(self, transactions: pl.LazyFrame) -> ModelData:
        """The same tables with other purchases (a time cut, a user shard)."""
        return dataclasses.replace(self, transactions=transactions)


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
    history_model = stage1.fit_stage1(
        split.history(tx, windows), data.catalogue, settings.candidates, placeholder
    )
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


def wants_new_items_ranker(settings: Settings) -> bool:
    """Whether training fits a new-items ranker: a list is published and ranked by its own."""
    return settings.publish.new_items > 0 and settings.new_items.own_ranker


def stage2_users(tx: pl.LazyFrame, windows: Windows) -> pl.LazyFrame:
    """Users with a purchase in the stage-2 window and in the history (the only ones that
    can have a positive)."""
    return (
        split.stage2_window(tx, windows)
        .select(C.USER)
        .unique()
        .join(history_users(tx, windows.history_end), on=C.USER, how="semi")
    )


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


def with_gated_ranker(
    gated: TrainedTwoStage,
    data: ModelData,
    windows: Windows,
    settings: Settings,
    *,
    n_users: int | None = None,
) -> TrainedTwoStage:
    """The gate's ranker with stage 1 refit on everything before ``windows.target_end``.

    The ranker measured by the backtest is the one that scores: only stage 1 (which must
    know the newest purchases and every user) is fit again. Features are computed as of
    ``windows.target_end`` at scoring, as for a freshly trained model.
    """
    start = time.perf_counter()
    scoring_model = fit_scoring_stage1(data, windows, settings, n_users=n_users)
    seconds = time.perf_counter() - start
    trained_on = gated.ranker_windows or gated.windows
    log.info(
        "two-stage: scoring with the gate's ranker (targets: weeks %d-%d), stage 1 refit in %.1fs",
        trained_on.history_end,
        trained_on.target_end - 1,
        seconds,
    )
    return TrainedTwoStage(
        stage1_for_scoring=scoring_model,
        ranker=gated.ranker,
        feature_names=gated.feature_names,
        windows=windows,
        timings={"stage1_fit_scoring": seconds},
        train_rows=gated.train_rows,
        ranker_windows=trained_on,
        forward_plan_features=gated.forward_plan_features,
        new_items_ranker=gated.new_items_ranker,
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


def save_model(model: TrainedTwoStage, folder: Path) -> None:
    """Write the ranker (LightGBM text), stage 1 and the windows under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_ranker(model.ranker, folder)
    if model.new_items_ranker is not None:
        save_ranker(model.new_items_ranker, folder / NEW_ITEMS_DIR)
    saver = getattr(stage1, "save_stage1", None)
    if saver is not None:
        saver(model.stage1_for_scoring, folder / "stage1")
    else:
        (folder / STAGE1_FILE).write_bytes(pickle.dumps(model.stage1_for_scoring))
    meta = {
        "feature_names": list(model.feature_names),
        "windows": dataclasses.asdict(model.windows),
        "timings": model.timings,
        "train_rows": model.train_rows,
        "forward_plan_features": model.forward_plan_features,
        "ranker_windows": (
            None if model.ranker_windows is None else dataclasses.asdict(model.ranker_windows)
        ),
    }
    (folder / MODEL_META_FILE).write_text(json.dumps(meta, indent=2))


def load_model(folder: Path) -> TrainedTwoStage:
    """Read a model written by :func:`save_model`."""
    folder = Path(folder)
    meta = json.loads((folder / MODEL_META_FILE).read_text())
    loader = getattr(stage1, "load_stage1", None)
    if loader is not None and (folder / "stage1").exists():
        model1 = loader(folder / "stage1")
    else:
        model1 = pickle.loads((folder / STAGE1_FILE).read_bytes())  # noqa: S301 - our own file
    return TrainedTwoStage(
        stage1_for_scoring=model1,
        ranker=load_ranker(folder),
        feature_names=tuple(meta["feature_names"]),
        windows=Windows(**meta["windows"]),
        timings=meta.get("timings", {}),
        train_rows=int(meta.get("train_rows", 0)),
        ranker_windows=Windows(**meta["ranker_windows"]) if meta.get("ranker_windows") else None,
        forward_plan_features=bool(meta.get("forward_plan_features", False)),
        new_items_ranker=(
            load_ranker(folder / NEW_ITEMS_DIR) if (folder / NEW_ITEMS_DIR).is_dir() else None
        ),
    )
