"""Stage-2 ranker: fit and score LightGBM on the joined features, keep the top k per user.

``fit_ranker`` collects the training frame once, sorts it by user (the ranking objectives need
contiguous groups), optionally samples negatives per user, holds out a share of *users* for early
stopping, and trains with a fixed seed and thread count (deterministic for a given input).

The label is ``target``: 0/1, or a graded purchase count for the ranking objectives
(``rank_xendcg``, ``lambdarank``; the binary objective clips it to 0/1). ``ranker.n_models``
> 1 trains a bagged ensemble (seeds ``seed, seed + 1, ...``); its score is the mean of the
members' raw scores, so it depends only on the candidate's own features (a user's ranking does
not change with the shard it is in).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lightgbm as lgb
import numpy as np
import polars as pl

from recsys_batch.config import RankerConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import EmptyStageError

log = logging.getLogger(__name__)

LIGHTGBM_LOCK = threading.Lock()
"""One LightGBM call at a time in the process: a training and a prediction on two threads
(the fits beside the gate, ``scale.beside_gate_rows``) crashed the interpreter once (a
segfault in a CI run, 2026-12-08)."""

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)

BOOSTER_FILE = "ranker.txt"
META_FILE = "ranker.json"


@dataclass
class Ranker:
    """Trained LightGBM booster(s) and the feature columns they expect, in order.

    ``booster``/``best_iteration`` is the first model; ``bagged`` holds the other members of
    a bagged ensemble as ``(booster, best_iteration)`` pairs (empty for a single model).
    """

    booster: lgb.Booster
    feature_names: tuple[str, ...]
    categorical: tuple[str, ...]
    best_iteration: int
    bagged: tuple[tuple[lgb.Booster, int], ...] = ()
    train_rows: int = 0
    """Rows it was fit on (0 when loaded from disk)."""

    @property
    def members(self) -> tuple[tuple[lgb.Booster, int], ...]:
        """Every ``(booster, best_iteration)`` of the ensemble, the first model first."""
        return ((self.booster, self.best_iteration), *self.bagged)

    def importances(self, kind: str = "gain") -> pl.DataFrame:
        """``feature``, ``importance`` (total gain by default, summed over the ensemble)."""
        with LIGHTGBM_LOCK:
            values = np.sum(
                [
                    booster.feature_importance(importance_type=kind, iteration=best)
                    for booster, best in self.members
                ],
                axis=0,
            )
        return pl.DataFrame(
            {"feature": list(self.feature_names), "importance": values.astype(np.float64)}
        ).sort("importance", descending=True)


def feature_matrix(frame: pl.DataFrame, feature_names: tuple[str, ...]) -> np.ndarray:
    """The features as a float32 matrix (nulls -> NaN, LightGBM's missing value)."""
    # C order: LightGBM flattens the matrix row-major and would copy a Fortran-ordered one.
    return frame.select(pl.col(name).cast(pl.Float32) for name in feature_names).to_numpy(order="c")


def sample_negatives(frame: FrameT, per_user: int | None, seed: int) -> FrameT:
    """Keep every positive (any ``target`` > 0, graded labels included) and at most
    ``per_user`` random negatives per user (None = all)."""
    if per_user is None:
        return frame
    keyed = frame.with_columns(
        pl.col(C.ITEM).hash(seed).rank("ordinal").over(C.USER, C.TARGET).alias("_pick")
    )
    return keyed.filter((pl.col(C.TARGET) > 0) | (pl.col("_pick") <= per_user)).drop("_pick")


def validation_users(users: pl.Series, share: float, seed: int) -> pl.Series:
    """A deterministic ``share`` of the distinct users, for early stopping."""
    distinct = users.unique().sort()
    n_valid = int(round(len(distinct) * share))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(distinct), size=n_valid, replace=False) if n_valid else np.empty(0)
    return distinct.gather(np.sort(np.asarray(picked, dtype=np.int64)))


def _params(cfg: RankerConfig) -> dict[str, object]:
    params: dict[str, object] = {
        "objective": cfg.objective,
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "min_child_samples": cfg.min_child_samples,
        "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": 1 if cfg.bagging_fraction < 1.0 else 0,
        "lambda_l2": cfg.lambda_l2,
        "cat_smooth": cfg.cat_smooth,
        "max_cat_to_onehot": 8,
        "seed": cfg.seed,
        "deterministic": True,
        # Column-wise histograms: the same model as row-wise, and the faster layout for a
        # frame of about a hundred features on a few cores.
        "force_col_wise": True,
        "bin_construct_sample_cnt": cfg.bin_sample_rows,
        "num_threads": cfg.threads,
        "verbosity": -1,
    }
    if cfg.objective != "binary":
        params["metric"] = "ndcg"
        params["eval_at"] = [cfg.top_k]
        # Gain 2^label - 1 for the graded labels 0..max_label (purchase days in the window).
        params["label_gain"] = [float(2**g - 1) for g in range(max(cfg.max_label, 1) + 1)]
    else:
        params["metric"] = "binary_logloss"
    return params


def training_label(target: pl.Series, cfg: RankerConfig) -> np.ndarray:
    """The LightGBM label: 0/1 for ``binary``, the target capped at ``max_label`` otherwise."""
    top = 1 if cfg.objective == "binary" else max(cfg.max_label, 1)
    return target.clip(0, top).cast(pl.Int32).to_numpy()


TARGET_SPEND = "target_spend"
"""Training column: the user's spend on the item in the stage-2 window (the label's window)."""


def target_spend(window_transactions: pl.LazyFrame) -> pl.LazyFrame:
    """``user_id``, ``item_id``, ``target_spend``: spend per pair in the label's window."""
    return window_transactions.group_by(C.USER, C.ITEM).agg(
        pl.col(C.SALES).sum().cast(pl.Float32).alias(TARGET_SPEND)
    )


def training_weight(frame: pl.DataFrame, cfg: RankerConfig) -> np.ndarray | None:
    """Row weights: 1 for a negative, ``(spend / median positive spend) ** revenue_weight``
    for a positive (spend at least ``min_expected_spend``); None when the weight is 0 or
    the frame has no ``target_spend``."""
    if cfg.revenue_weight == 0.0 or TARGET_SPEND not in frame.columns:
        return None
    positive = pl.col(C.TARGET) > 0
    spend = pl.col(TARGET_SPEND).cast(pl.Float64).fill_null(0.0).clip(cfg.min_expected_spend)
    median = frame.select(spend.filter(positive).median()).item() or 1.0
    weight = pl.when(positive).then((spend / median) ** cfg.revenue_weight).otherwise(1.0)
    return frame.select(weight.alias("_w"))["_w"].to_numpy()


def _dataset(
    frame: pl.DataFrame, names: tuple[str, ...], categorical: tuple[str, ...], cfg: RankerConfig
) -> lgb.Dataset:
    group = frame.group_by(C.USER, maintain_order=True).len()["len"].to_numpy()
    return lgb.Dataset(
        feature_matrix(frame, names),
        label=training_label(frame[C.TARGET], cfg),
        weight=training_weight(frame, cfg),
        group=group,
        feature_name=list(names),
        categorical_feature=list(categorical),
        free_raw_data=True,
    )


def _boosted(
    train_set: lgb.Dataset, valid_sets: list[lgb.Dataset], cfg: RankerConfig
) -> tuple[lgb.Booster, int]:
    """One booster and its best iteration (early stopping on ``valid_sets`` when given)."""
    callbacks: list[Callable[..., Any]] = []
    if valid_sets:
        callbacks.append(lgb.early_stopping(cfg.early_stopping_rounds, verbose=False))
    with LIGHTGBM_LOCK:
        booster = lgb.train(
            _params(cfg),
            train_set,
            num_boost_round=cfg.n_estimators,
            valid_sets=valid_sets,
            callbacks=callbacks,
        )
    return booster, int(booster.best_iteration or booster.current_iteration())


def fit_ranker(
    train: pl.LazyFrame,
    feature_names: tuple[str, ...],
    categorical: tuple[str, ...],
    cfg: RankerConfig,
) -> Ranker:
    """Train LightGBM on candidates with features and a ``target`` column.

    Users whose candidates hold no positive are dropped (they carry no ranking signal).

    Raises
    ------
    EmptyStageError
        No candidate is a positive: the stage-2 window has no purchase of a candidate.
    """
    start = time.perf_counter()
    spend = [TARGET_SPEND] if TARGET_SPEND in train.collect_schema().names() else []
    # One materialisation: users without a positive and unsampled negatives are dropped in
    # the lazy plan, so the (wide) frame is copied once more only for the train/valid split.
    frame = (
        sample_negatives(
            train.select(C.USER, C.ITEM, C.TARGET, *spend, *feature_names).filter(
                pl.col(C.TARGET).max().over(C.USER) > 0
            ),
            cfg.negatives_per_user,
            cfg.seed,
        )
        .sort(C.USER, C.ITEM)
        .collect()
    )
    if frame.is_empty():
        msg = "stage-2 training set has no positive: no candidate was bought in the target window"
        raise EmptyStageError(
            msg,
            column=C.TARGET,
            fix="check the split (split.stage2_weeks) and that candidates cover bought items",
        )
    summary = (
        frame.height,
        frame[C.USER].n_unique(),
        float(frame.select((pl.col(C.TARGET) > 0).mean()).item() or 0),
    )
    valid_users = validation_users(frame[C.USER], cfg.validation_share, cfg.seed)
    is_valid = frame[C.USER].is_in(valid_users.implode())
    train_part, valid_part = frame.filter(~is_valid), frame.filter(is_valid)
    del frame, is_valid
    # Binned once for every member of a bag: the seed draws rows and columns per tree, not
    # the bins (the first member's sample of rows sets them), and binning a wide frame costs
    # as much as ~30 boosting rounds.
    train_set = _dataset(train_part, feature_names, categorical, cfg)
    valid_sets = []
    if not valid_part.is_empty():
        valid_sets = [_dataset(valid_part, feature_names, categorical, cfg)]
    del train_part, valid_part
    members = [
        _boosted(train_set, valid_sets, cfg.model_copy(update={"seed": cfg.seed + member}))
        for member in range(max(cfg.n_models, 1))
    ]
    log.info(
        "ranker: %d rows (%d users, %.3f positive), %d model(s), best iterations %s, %.1fs",
        *summary,
        len(members),
        [best for _, best in members],
        time.perf_counter() - start,
    )
    (first, best), *rest = members
    return Ranker(first, tuple(feature_names), tuple(categorical), best, tuple(rest), summary[0])


def score(ranker: Ranker, candidates: pl.LazyFrame) -> pl.DataFrame:
    """``user_id``, ``item_id``, ``score`` for every candidate (higher = better)."""
    frame = candidates.select(C.USER, C.ITEM, *ranker.feature_names).collect()
    if frame.is_empty():
        return frame.select(C.USER, C.ITEM).with_columns(
            pl.lit(None, dtype=pl.Float32).alias(C.SCORE)
        )
    matrix = feature_matrix(frame, ranker.feature_names)
    with LIGHTGBM_LOCK:
        values = np.mean(
            [booster.predict(matrix, num_iteration=best) for booster, best in ranker.members],
            axis=0,
        )
    return frame.select(C.USER, C.ITEM).with_columns(pl.Series(C.SCORE, values, dtype=pl.Float32))


# Feature columns (point in time, as of the cut) that :func:`own_spend` reads.
SPEND_COLUMNS = ("ui_spend", "ui_baskets")


def own_spend(min_spend: float) -> pl.Expr:
    """The user's past spend per basket holding the item ($, at least ``min_spend``); null
    for an item they never bought.

    Both inputs are features as of the cut, so it never reads the target window.

    Examples
    --------
    >>> frame = pl.DataFrame({"ui_spend": [6.0, 0.05, 0.0], "ui_baskets": [3, 1, 0]})
    >>> frame.select(own_spend(0.1).alias("spend"))["spend"].to_list()
    [2.0, 0.1, None]
    """
    spend = pl.col("ui_spend").cast(pl.Float64) / pl.col("ui_baskets")
    return pl.when(pl.col("ui_baskets") > 0).then(spend.clip(lower_bound=min_spend))


def log_expected_spend(min_spend: float) -> pl.Expr:
    """ln of the user's expected spend on the candidate in one purchase (per row of a frame
    of whole users' candidates).

    An item the user bought before: ln :func:`own_spend`. An item never bought: the user's
    median of that over their bought candidates (0 when they have none), so the blend never
    moves a new item against the user's typical item. Issue #26 measured the item's typical
    spend (median unit price x mean quantity per basket) for new items instead: as much
    revenue for more Precision@5 lost, new items pushed in by their price (docs/evaluation.md).
    """
    own = own_spend(min_spend).log()
    return own.fill_null(own.median().over(C.USER).fill_null(0.0))


def revenue_blended(
    scored: pl.DataFrame, candidates: pl.DataFrame, exponent: float, min_spend: float
) -> pl.DataFrame:
    """``scored`` with ``score`` + ``exponent`` x ln(expected spend): rank by expected revenue.

    The ranking objectives' score is a log-potential (the item's share of the user's
    purchases is ``softmax(score)``), so within a user this orders by
    ``probability x spend ** exponent``: 0 = the ranker alone, 1 = expected revenue.
    ``candidates`` holds ``user_id`` and the :data:`SPEND_COLUMNS` of the same rows in the
    same order (the frame :func:`score` read), each user's candidates whole: the blend reads
    only the user's own rows, so a user's ranking does not change with the shard it is in.
    """
    if exponent == 0.0 or scored.is_empty():
        return scored
    log_spend = candidates.select(log_expected_spend(min_spend).alias("_log_spend"))
    return scored.with_columns(
        (pl.col(C.SCORE).cast(pl.Float64) + exponent * log_spend["_log_spend"])
        .cast(pl.Float32)
        .alias(C.SCORE)
    )


def ranking_scores(ranker: Ranker, candidates: pl.DataFrame, cfg: RankerConfig) -> pl.DataFrame:
    """``user_id``, ``item_id``, ``score`` the lists are ranked by (backtest and nightly alike).

    The ranker's :func:`score`, blended with the expected spend when
    ``cfg.revenue_exponent`` is not 0 (:func:`revenue_blended`).
    """
    scored = score(ranker, candidates.lazy())
    return revenue_blended(scored, candidates, cfg.revenue_exponent, cfg.min_expected_spend)


def top_k(scored: pl.LazyFrame, k: int) -> pl.LazyFrame:
    """The ``k`` best items per user, ranks 1..k (schema ``RECOMMENDATIONS``).

    Ties are broken by item id so the output is deterministic.
    """
    return (
        scored.unique(subset=[C.USER, C.ITEM], keep="first")
        .sort([C.USER, C.SCORE, C.ITEM], descending=[False, True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over(C.USER).cast(pl.Int32).alias(C.RANK))
        .filter(pl.col(C.RANK) <= k)
        .select(
            pl.col(C.USER).cast(pl.Int64),
            pl.col(C.ITEM).cast(pl.Int64),
            pl.col(C.RANK),
            pl.col(C.SCORE).cast(pl.Float32),
        )
    )


def _member_file(number: int) -> str:
    """File of the ``number``-th extra member of a bagged ensemble (1-based)."""
    return f"ranker_{number}.txt"


def save_ranker(ranker: Ranker, folder: Path) -> None:
    """Write the booster as LightGBM text plus a small JSON of feature metadata."""
    import json  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    ranker.booster.save_model(str(folder / BOOSTER_FILE), num_iteration=ranker.best_iteration)
    for number, (booster, best) in enumerate(ranker.bagged, start=1):
        booster.save_model(str(folder / _member_file(number)), num_iteration=best)
    meta = {
        "feature_names": list(ranker.feature_names),
        "categorical": list(ranker.categorical),
        "best_iteration": ranker.best_iteration,
        "bagged_best_iterations": [best for _, best in ranker.bagged],
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


def load_ranker(folder: Path) -> Ranker:
    """Read a ranker written by :func:`save_ranker`."""
    import json  # noqa: PLC0415

    meta = json.loads((folder / META_FILE).read_text())
    booster = lgb.Booster(model_file=str(folder / BOOSTER_FILE))
    bagged = tuple(
        (lgb.Booster(model_file=str(folder / _member_file(number))), int(best))
        for number, best in enumerate(meta.get("bagged_best_iterations", []), start=1)
    )
    return Ranker(
        booster,
        tuple(meta["feature_names"]),
        tuple(meta["categorical"]),
        int(meta["best_iteration"]),
        bagged,
    )
