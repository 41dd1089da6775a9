"""The offline backtest of issue #4: two-stage model vs baselines on a held-out test window.

Protocol (W = newest week; printed by ``recsys evaluate`` and written in its report)::

    test             week >= W - 3                    (never seen by any model)
    stage-2 window   W - 9 <= week < W - 3            (ranker targets)
    stage-1 history  week < W - 9                     (stage-1 fit, training features)

- The catalogue (prefilter) is computed from history + stage-2 window only.
- Stage 1 is fit on history; stage-2 targets are the catalogue items each candidate user
  bought in the stage-2 window; training features use only data before that window. For the
  test, stage 1 is refit on history + stage-2 window, features are recomputed as of the end
  of that window and the trained ranker scores the candidates.
- Users: "all" = every user with a purchase in the test window who appears before it;
  "seed" = those who bought at least 5 distinct catalogue items in the test window.
- Precision@5 = |top 5 and distinct items bought in the test window| / 5, averaged over
  users; Recall@5, MAP@5, NDCG@5 against the distinct catalogue items bought; coverage =
  distinct recommended items / catalogue size.
- Baselines on the same catalogue and users: popular (most distinct buyers in the last
  weeks before the test), own purchases (recency-weighted, padded with popular), ALS alone
  (the ALS generator of the refit stage 1), and the two-stage model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import Dataset
from recsys_batch.evaluation.metrics import evaluate, precision_curve
from recsys_batch.model import split
from recsys_batch.model.prefilter import apply_catalogue, prefilter
from recsys_batch.model.two_stage import (
    TrainedTwoStage,
    popular_fallback,
    rank_candidates,
    train_two_stage,
)

log = logging.getLogger(__name__)

MODELS = ("popular", "own_purchases", "als", "two_stage")
USER_SETS = ("all", "seed")
SEED_MIN_ITEMS = 5
K = 5
CURVE_K = 10
POPULAR_WEEKS = 4


def protocol_text(settings: Settings, windows: split.Windows | None = None) -> str:
    """The backtest protocol in words, with the concrete weeks when ``windows`` is given."""
    t, s = settings.split.test_weeks, settings.split.stage2_weeks
    lines = [
        f"test: week >= W-{t}; stage-2 window: W-{t + s} <= week < W-{t}; "
        f"stage-1 history: week < W-{t + s} (W = newest week)",
    ]
    if windows is not None:
        lines.append(
            f"weeks: history {windows.first_week}..{windows.history_end - 1}, "
            f"stage-2 {windows.history_end}..{windows.target_end - 1}, "
            f"test {windows.target_end}..{(windows.test_end or windows.target_end) - 1}"
        )
    lines += [
        "catalogue (prefilter) from history + stage-2 window only, never from test",
        "stage 1 fit on history; targets = catalogue items bought in the stage-2 window; "
        "training features from data before that window",
        "test: stage 1 refit on history + stage-2 window, features as of its end, "
        "ranker scores the candidates",
        '"all" = users with a test-window purchase who appear before it; '
        f'"seed" = those with >= {SEED_MIN_ITEMS} distinct catalogue items bought '
        "in the test window",
        f"precision@{K} = |top {K} and distinct items bought in the test window| / {K}, "
        "averaged over users; recall/MAP/NDCG against distinct catalogue items bought",
    ]
    return "\n".join(lines)


@dataclass
class BacktestResult:
    """Everything ``recsys evaluate`` prints, writes as JSON and plots."""

    rows: list[dict[str, Any]]
    """One dict per (model, user set): model, user_set, users, precision@5, recall@5,
    map@5, ndcg@5, coverage."""
    candidates: dict[str, Any]
    """Candidate recall of the stage-1 union and each generator on the test window."""
    funnel: pl.DataFrame
    """The prefilter funnel (rule, items, users, rows)."""
    importances: pl.DataFrame
    """Ranker feature importances (feature, importance), most important first."""
    timings: dict[str, float]
    """Seconds per step."""
    windows: split.Windows
    protocol: str
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """model -> user set -> precision@k for k = 1..10."""
    catalogue_size: int = 0
    seed_runs: list[dict[str, Any]] = field(default_factory=list)
    """``recsys evaluate --seeds N``: one entry per seed pair (``als_seed``, ``ranker_seed``,
    ``rows``); empty for a single run."""
    model: TrainedTwoStage | None = None
    """The two-stage model the rows measure (the nightly gate can publish its ranker)."""

    def precision(self, model: str = "two_stage", user_set: str = "all") -> float:
        """Precision@5 of one row (the nightly quality gate reads two_stage/all)."""
        for row in self.rows:
            if row["model"] == model and row["user_set"] == user_set:
                return float(row[f"precision@{K}"])
        msg = f"no backtest row for model={model!r}, user_set={user_set!r}"
        raise KeyError(msg)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable form of ``recsys evaluate --json``."""
        return {
            "rows": self.rows,
            "candidates": self.candidates,
            "protocol": self.protocol,
            "windows": {
                "first_week": self.windows.first_week,
                "history_end": self.windows.history_end,
                "target_end": self.windows.target_end,
                "test_end": self.windows.test_end,
            },
            "catalogue_size": self.catalogue_size,
            "timings": self.timings,
            "precision_curves": self.curves,
            "importances": self.importances.head(30).to_dicts(),
            "funnel": self.funnel.to_dicts(),
            **(
                {"seed_runs": self.seed_runs, "seed_spread": seed_spread(self.seed_runs)}
                if self.seed_runs
                else {}
            ),
        }


def reseeded(settings: Settings, offset: int) -> Settings:
    """``settings`` with the ALS and the ranker seed moved by ``offset`` (0: unchanged)."""
    cands = settings.candidates
    als = cands.als.model_copy(update={"seed": cands.als.seed + offset})
    return settings.model_copy(
        update={
            "candidates": cands.model_copy(update={"als": als}),
            "ranker": settings.ranker.model_copy(update={"seed": settings.ranker.seed + offset}),
        }
    )


def seed_spread(
    seed_runs: list[dict[str, Any]], metric: str = f"precision@{K}"
) -> list[dict[str, Any]]:
    """Mean, min, max and standard deviation of ``metric`` per (model, user set) over runs.

    ``seed_runs`` entries carry ``rows`` as in :attr:`BacktestResult.rows`; the standard
    deviation is the sample one (0 for a single run).
    """
    frame = pl.DataFrame(
        [
            {"model": r["model"], "user_set": r["user_set"], "value": float(r[metric])}
            for run in seed_runs
            for r in run["rows"]
        ],
        schema={"model": pl.String, "user_set": pl.String, "value": pl.Float64},
    )
    return (
        frame.group_by("model", "user_set", maintain_order=True)
        .agg(
            pl.len().alias("runs"),
            pl.col("value").mean().alias("mean"),
            pl.col("value").min().alias("min"),
            pl.col("value").max().alias("max"),
            pl.col("value").std().fill_null(0.0).alias("std"),
        )
        .with_columns(pl.lit(metric).alias("metric"))
        .to_dicts()
    )


def evaluation_users(
    tx: pl.LazyFrame, test_truth: pl.LazyFrame, windows: split.Windows
) -> dict[str, pl.LazyFrame]:
    """The "all" and "seed" user sets of the protocol (one ``user_id`` column each).

    ``tx`` holds every purchase (any item); ``test_truth`` the distinct catalogue items
    bought in the test window.
    """
    seen_before = split.before_test(tx, windows).select(C.USER).unique()
    all_users = (
        split.test_window(tx, windows)
        .select(C.USER)
        .unique()
        .join(seen_before, on=C.USER, how="semi")
    )
    seed = (
        test_truth.group_by(C.USER)
        .agg(pl.col(C.ITEM).n_unique().alias("_n"))
        .filter(pl.col("_n") >= SEED_MIN_ITEMS)
        .select(C.USER)
        .join(all_users, on=C.USER, how="semi")
    )
    return {"all": all_users, "seed": seed}


def ranked_list(scored: pl.LazyFrame, by: str, k: int, *, descending: bool = True) -> pl.LazyFrame:
    """Top ``k`` per user of ``scored`` ordered by column ``by`` (schema ``RECOMMENDATIONS``)."""
    return (
        scored.sort([C.USER, by, C.ITEM], descending=[False, descending, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over(C.USER).cast(pl.Int32).alias(C.RANK))
        .filter(pl.col(C.RANK) <= k)
        .select(C.USER, C.ITEM, C.RANK, pl.col(by).cast(pl.Float32).alias(C.SCORE))
    )


def popular_baseline(users: pl.LazyFrame, popular: list[int], k: int) -> pl.LazyFrame:
    """Every user gets the same ``popular`` list."""
    items = pl.LazyFrame(
        {
            C.ITEM: popular[:k],
            C.RANK: list(range(1, min(k, len(popular)) + 1)),
        },
        schema={C.ITEM: pl.Int64, C.RANK: pl.Int32},
    )
    return (
        users.select(C.USER)
        .join(items, how="cross")
        .with_columns((1.0 / pl.col(C.RANK)).cast(pl.Float32).alias(C.SCORE))
    )


def own_purchases_baseline(
    tx: pl.LazyFrame,
    catalogue: pl.LazyFrame,
    users: pl.LazyFrame,
    popular: list[int],
    half_life_days: float,
    k: int,
) -> pl.LazyFrame:
    """The user's own catalogue purchases by recency-weighted count, padded with popular."""
    ref_day = pl.col(C.DAY).max() + 1
    weight = (2.0 ** (-(ref_day - pl.col(C.DAY)).cast(pl.Float64) / half_life_days)).alias("_w")
    own = (
        tx.join(catalogue.select(C.ITEM), on=C.ITEM, how="semi")
        .with_columns(weight)
        .group_by(C.USER, C.ITEM)
        .agg(pl.col("_w").sum().alias("_s"))
        .join(users.select(C.USER), on=C.USER, how="semi")
    )
    # Popular items score below any own purchase (own scores are > 0).
    pad = popular_baseline(users, popular, k).select(
        C.USER, C.ITEM, (-pl.col(C.RANK).cast(pl.Float64)).alias("_s")
    )
    merged = pl.concat([own, pad]).group_by(C.USER, C.ITEM).agg(pl.col("_s").max())
    return ranked_list(merged, "_s", k)


def als_baseline(candidates: pl.LazyFrame, k: int) -> pl.LazyFrame:
    """ALS alone: the ALS generator's own ranking of the candidates."""
    rank = C.rank_col("als")
    return ranked_list(
        candidates.filter(pl.col(rank).is_not_null()).with_columns(
            (-pl.col(rank).cast(pl.Float64)).alias("_s")
        ),
        "_s",
        k,
    )


def _candidate_recall(candidates: pl.LazyFrame, truth: pl.LazyFrame) -> dict[str, Any]:
    try:
        from recsys_batch.evaluation.candidate_metrics import candidate_recall  # noqa: PLC0415
    except ImportError:  # the stage-1 metrics module is optional for the ranking backtest
        return {}
    return candidate_recall(candidates, truth)


def prepare(dataset: Dataset, settings: Settings) -> dict[str, Any]:
    """Windows, catalogue, funnel and catalogue-applied transactions of the backtest.

    Negative quantities (returns) are dropped here, whether or not validation ran first.
    """
    raw = dataset.transactions.filter(pl.col(C.QTY) >= 0)
    first_week, last_week = split.week_range(raw)
    windows = split.backtest_windows(first_week, last_week, settings.split)
    pre = prefilter(split.before_test(raw, windows), dataset.items, settings.prefilter)
    catalogue = pre.catalogue.collect()
    funnel = pre.funnel.collect()
    tx = apply_catalogue(raw, catalogue.lazy(), settings.prefilter).collect()
    return {
        "raw": raw,
        "windows": windows,
        "catalogue": catalogue,
        "funnel": funnel,
        "tx": tx,
    }


def test_truth(tx: pl.LazyFrame, windows: split.Windows, placeholder: int) -> pl.LazyFrame:
    """Distinct catalogue items each user bought in the test window."""
    return (
        split.test_window(tx, windows)
        .filter(pl.col(C.ITEM) != placeholder)
        .select(C.USER, C.ITEM)
        .unique()
    )


def run_seeded_backtest(dataset: Dataset, settings: Settings, seeds: int) -> BacktestResult:
    """:func:`run_backtest` with ``seeds`` seed pairs; the result is the configured seeds' run.

    Run ``i`` moves the ALS and the ranker seed by ``i`` (:func:`reseeded`); every run's rows
    are in ``seed_runs`` so that a change can be judged against the seed-to-seed spread of
    Precision@5, not against one draw. The prefilter and split do not depend on a seed and
    are computed once.
    """
    prepared = prepare(dataset, settings)
    result = run_backtest(dataset, settings, prepared=prepared)
    runs = [_seed_run(settings, result)]
    for offset in range(1, max(seeds, 1)):
        again = reseeded(settings, offset)
        runs.append(_seed_run(again, run_backtest(dataset, again, prepared=prepared)))
    if seeds > 1:
        result.seed_runs = runs
    return result


def _seed_run(settings: Settings, result: BacktestResult) -> dict[str, Any]:
    return {
        "als_seed": settings.candidates.als.seed,
        "ranker_seed": settings.ranker.seed,
        "rows": result.rows,
    }


def run_backtest(
    dataset: Dataset, settings: Settings, *, prepared: dict[str, Any] | None = None
) -> BacktestResult:
    """Run the issue-#4 protocol: train, score the test window, compare with the baselines.

    ``prepared`` is :func:`prepare`'s output for the same dataset and settings (computed
    here when None).

    Raises
    ------
    DataError
        Too few weeks for the split, or no transactions.
    EmptyStageError
        No training positive (the stage-2 window holds no purchase of a candidate).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    prep = prepared if prepared is not None else prepare(dataset, settings)
    windows: split.Windows = prep["windows"]
    catalogue: pl.DataFrame = prep["catalogue"]
    tx: pl.DataFrame = prep["tx"]
    placeholder = settings.prefilter.placeholder_item
    items = dataset.items.collect().lazy() if dataset.items is not None else None
    users = dataset.users.collect().lazy() if dataset.users is not None else None
    timings["prepare"] = time.perf_counter() - start
    log.info("backtest windows %s, catalogue %d items", windows, catalogue.height)

    truth = test_truth(tx.lazy(), windows, placeholder).collect()
    user_sets = {
        name: frame.collect()
        for name, frame in evaluation_users(tx.lazy(), truth.lazy(), windows).items()
    }
    all_users = user_sets["all"].lazy()

    start = time.perf_counter()
    train_tx = split.before_test(tx.lazy(), windows)
    model: TrainedTwoStage = train_two_stage(
        train_tx, items, users, catalogue.lazy(), windows, settings
    )
    timings.update(model.timings)
    timings["train_total"] = time.perf_counter() - start

    start = time.perf_counter()
    two_stage, cands = rank_candidates(
        model, train_tx, items, users, catalogue.lazy(), all_users, settings, CURVE_K
    )
    timings["score"] = time.perf_counter() - start

    start = time.perf_counter()
    recent = train_tx.filter(pl.col(C.WEEK) >= windows.target_end - POPULAR_WEEKS)
    popular = popular_fallback(recent, catalogue.lazy(), CURVE_K)
    lists = {
        "popular": popular_baseline(all_users, popular, CURVE_K).collect(),
        "own_purchases": own_purchases_baseline(
            train_tx,
            catalogue.lazy(),
            all_users,
            popular,
            settings.candidates.own_half_life_days,
            CURVE_K,
        ).collect(),
        "als": als_baseline(cands.lazy(), CURVE_K).collect(),
        "two_stage": two_stage,
    }
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[float]]] = {}
    for model_name in MODELS:
        recs = lists[model_name].lazy()
        curves[model_name] = {}
        for set_name in USER_SETS:
            set_users = user_sets[set_name].lazy()
            metrics = evaluate(recs, truth.lazy(), set_users, k=K, catalogue_size=catalogue.height)
            rows.append({"model": model_name, "user_set": set_name, **metrics})
            curves[model_name][set_name] = precision_curve(recs, truth.lazy(), set_users, CURVE_K)
    timings["baselines_and_metrics"] = time.perf_counter() - start

    start = time.perf_counter()
    cand_recall = _candidate_recall(
        cands.lazy(), truth.lazy().join(all_users, on=C.USER, how="semi")
    )
    timings["candidate_recall"] = time.perf_counter() - start
    return BacktestResult(
        rows=rows,
        candidates=cand_recall,
        funnel=prep["funnel"],
        importances=model.importances(),
        timings=timings,
        windows=windows,
        protocol=protocol_text(settings, windows),
        curves=curves,
        catalogue_size=catalogue.height,
        model=model,
    )


def run_candidate_backtest(dataset: Dataset, settings: Settings) -> dict[str, Any]:
    """Stage-1 candidate recall on the test window (``recsys evaluate --stage candidates``).

    Stage 1 is fit on history + stage-2 window (as for the test scoring of the backtest),
    candidates are generated for the "all" users, and compared with the distinct catalogue
    items each of them bought in the test window.

    Returns
    -------
    dict
        ``{"generators": {name: {"recall", "mean_candidates", ...}}, "union": {"recall",
        "mean_candidates", "precision_at_5_upper_bound", ...}}``.
    """
    from recsys_batch.evaluation.candidate_metrics import candidate_recall  # noqa: PLC0415
    from recsys_batch.model import candidates as stage1  # noqa: PLC0415

    prep = prepare(dataset, settings)
    windows: split.Windows = prep["windows"]
    tx: pl.DataFrame = prep["tx"]
    placeholder = settings.prefilter.placeholder_item
    truth = test_truth(tx.lazy(), windows, placeholder).collect()
    all_users = evaluation_users(tx.lazy(), truth.lazy(), windows)["all"].collect()
    model = stage1.fit_stage1(
        split.before_test(tx.lazy(), windows),
        prep["catalogue"].lazy(),
        settings.candidates,
        placeholder,
    )
    cands = stage1.generate_candidates(model, all_users.lazy(), settings.candidates)
    return candidate_recall(cands, truth.lazy().join(all_users.lazy(), on=C.USER, how="semi"))
