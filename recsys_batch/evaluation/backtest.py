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
  "seed" = those who bought at least ``evaluation.seed_min_items`` (default 5) distinct
  catalogue items in the test window.
- Precision@k = |top k and distinct items bought in the test window| / k, averaged over
  users (k = ``evaluation.k``, default 5); Recall@k, MAP@k, NDCG@k against the distinct
  catalogue items bought; coverage = distinct recommended items / catalogue size.
- Baselines on the same catalogue and users: popular (most distinct buyers in the last
  weeks before the test), own purchases (recency-weighted, padded with popular), ALS alone
  (the refit stage 1's ALS model, its own top k over the whole catalogue), TIFU-KNN
  (:mod:`recsys_batch.evaluation.tifu_knn`), and the two-stage model.
- ``diff``: paired bootstrap interval of two-stage Precision@k minus each baseline's over the
  "all" users (:mod:`recsys_batch.evaluation.bootstrap`).

Several origins (``recsys evaluate --origins N``) are in :mod:`recsys_batch.evaluation.origins`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from recsys_batch.config import EvaluationConfig, Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import Dataset
from recsys_batch.evaluation.baselines import als_baseline, own_purchases_baseline, popular_baseline
from recsys_batch.evaluation.bootstrap import paired_differences
from recsys_batch.evaluation.metrics import evaluate, metric_key, per_user_metrics, precision_curve
from recsys_batch.evaluation.protocol import evaluation_users, prepare, test_truth
from recsys_batch.evaluation.tifu_knn import tifu_knn_baseline
from recsys_batch.model import split
from recsys_batch.model.new_items_ranking import new_item_recommendations
from recsys_batch.model.two_stage import (
    ModelData,
    TrainedTwoStage,
    popular_fallback,
    rank_candidates,
    train_two_stage,
)

log = logging.getLogger(__name__)

MODELS = ("popular", "own_purchases", "als", "tifu_knn", "two_stage", "two_stage_new")
USER_SETS = ("all", "seed")
POPULAR_WEEKS = 4
# Defaults for callers without a configuration; a run passes ``settings.evaluation``.
_DEFAULTS = EvaluationConfig()


def protocol_text(settings: Settings, windows: split.Windows | None = None) -> str:
    """The backtest protocol in words, with the concrete weeks when ``windows`` is given."""
    t, s = settings.split.test_weeks, settings.split.stage2_weeks
    k, seed_min_items = settings.evaluation.k, settings.evaluation.seed_min_items
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
        f'"seed" = those with >= {seed_min_items} distinct catalogue items bought '
        "in the test window",
        f"precision@{k} = |top {k} and distinct items bought in the test window| / {k}, "
        "averaged over users; recall/MAP/NDCG against distinct catalogue items bought",
    ]
    return "\n".join(lines)


@dataclass
class BacktestResult:
    """Everything ``recsys evaluate`` prints, writes as JSON and plots."""

    rows: list[dict[str, Any]]
    """One dict per (model, user set): model, user_set, users, precision@k, recall@k,
    map@k, ndcg@k, coverage (k = :attr:`k`)."""
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
    """model -> user set -> precision@k for k = 1..``evaluation.curve_k``."""
    catalogue_size: int = 0
    seed_runs: list[dict[str, Any]] = field(default_factory=list)
    """``recsys evaluate --seeds N``: one entry per seed pair (``als_seed``, ``ranker_seed``,
    ``rows``); empty for a single run."""
    model: TrainedTwoStage | None = None
    """The two-stage model the rows measure (the nightly gate can publish its ranker)."""
    k: int = _DEFAULTS.k
    """Cut-off of the rows' metrics (``evaluation.k``), in items per user."""
    diff: dict[str, dict[str, Any]] = field(default_factory=dict)
    """baseline -> ``{"mean", "lo", "hi", "users"}``: two-stage Precision@k minus the
    baseline's over the "all" users, with its paired bootstrap 95% interval."""
    lists: dict[str, pl.DataFrame] = field(default_factory=dict)
    """model -> its top ``evaluation.curve_k`` lists for the "all" users (not in the JSON)."""

    def precision(self, model: str = "two_stage", user_set: str = "all") -> float:
        """Precision@k of one row (the nightly quality gate reads two_stage/all)."""
        for row in self.rows:
            if row["model"] == model and row["user_set"] == user_set:
                return float(row[f"precision@{self.k}"])
        msg = f"no backtest row for model={model!r}, user_set={user_set!r}"
        raise KeyError(msg)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable form of ``recsys evaluate --json``."""
        return {
            "rows": self.rows,
            "diff": self.diff,
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
                {
                    "seed_runs": self.seed_runs,
                    "seed_spread": seed_spread(self.seed_runs, f"precision@{self.k}"),
                }
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
    seed_runs: list[dict[str, Any]], metric: str = f"precision@{_DEFAULTS.k}"
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


def _candidate_recall(
    candidates: pl.LazyFrame, truth: pl.LazyFrame, users: pl.LazyFrame
) -> dict[str, Any]:
    from recsys_batch.evaluation.candidate_metrics import candidate_recall  # noqa: PLC0415

    return candidate_recall(candidates, truth, users)


def run_seeded_backtest(dataset: Dataset, settings: Settings, seeds: int) -> BacktestResult:
    """:func:`run_backtest` with ``seeds`` seed pairs; the result is the configured seeds' run.

    Run ``i`` moves the ALS and the ranker seed by ``i`` (:func:`reseeded`); every run's rows
    are in ``seed_runs`` so that a change can be judged against the seed-to-seed spread of
    Precision@k, not against one draw. The prefilter and split do not depend on a seed and
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


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the seconds the ``with`` block takes as ``timings[step]``."""
    start = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - start


def _collected(frame: pl.LazyFrame | None) -> pl.LazyFrame | None:
    """``frame`` read once into memory (it is joined in several steps), or None."""
    return frame.collect().lazy() if frame is not None else None


def baseline_lists(
    data: ModelData,
    users: pl.LazyFrame,
    model: TrainedTwoStage,
    windows: split.Windows,
    settings: Settings,
) -> dict[str, pl.DataFrame]:
    """Top ``evaluation.curve_k`` lists of the baselines for ``users``.

    ``data.transactions`` holds the purchases before the test window only. Popular is the
    most distinct buyers over the ``POPULAR_WEEKS`` weeks before the test; ALS alone is the
    scoring stage 1's ALS model (fit on the same purchases as the two-stage model's).
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
        "als": als_baseline(model.stage1_for_scoring, users, k, chunk).collect(),
        "tifu_knn": tifu_knn_baseline(
            train_tx, catalogue, users, settings.evaluation.tifu_knn, k, placeholder
        ).collect(),
    }


def precision_diff(
    lists: dict[str, pl.DataFrame], truth: pl.DataFrame, users: pl.DataFrame, cfg: EvaluationConfig
) -> dict[str, dict[str, Any]]:
    """Two-stage Precision@k minus each baseline's over ``users``, with bootstrap intervals."""
    metric = metric_key("precision", cfg.k)
    per_user = {
        name: per_user_metrics(recs.lazy(), truth.lazy(), users.lazy(), cfg.k)
        .select(C.USER, metric)
        .collect()
        for name, recs in lists.items()
    }
    return paired_differences(
        per_user, metric, "two_stage", cfg.bootstrap_draws, cfg.bootstrap_seed
    )


def metric_rows(
    lists: dict[str, pl.DataFrame],
    truth: pl.DataFrame,
    user_sets: dict[str, pl.DataFrame],
    catalogue_size: int,
    cfg: EvaluationConfig,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """One metrics row per (model, user set) in ``MODELS`` x ``USER_SETS`` order, and the
    precision@k curves (k = 1..``cfg.curve_k``) per model and user set."""
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[float]]] = {}
    for model_name in (m for m in MODELS if m in lists):
        recs = lists[model_name].lazy()
        curves[model_name] = {}
        for set_name in USER_SETS:
            set_users = user_sets[set_name].lazy()
            metrics = evaluate(
                recs, truth.lazy(), set_users, k=cfg.k, catalogue_size=catalogue_size
            )
            rows.append({"model": model_name, "user_set": set_name, **metrics})
            curves[model_name][set_name] = precision_curve(
                recs, truth.lazy(), set_users, cfg.curve_k
            )
    return rows, curves


def run_backtest(
    dataset: Dataset,
    settings: Settings,
    *,
    prepared: dict[str, Any] | None = None,
    baselines: bool = True,
) -> BacktestResult:
    """Run the issue-#4 protocol: train, score the test window, compare with the baselines.

    ``prepared`` is :func:`prepare`'s output for the same dataset and settings (computed
    here when None). ``baselines=False`` (the nightly quality gate) measures the two-stage
    model only: no baseline lists, no bootstrap intervals.

    Raises
    ------
    DataError
        Too few weeks for the split, or no transactions.
    EmptyStageError
        No training positive (the stage-2 window holds no purchase of a candidate).
    """
    cfg = settings.evaluation
    timings: dict[str, float] = {}
    with _timed(timings, "prepare"):
        prep = prepared if prepared is not None else prepare(dataset, settings)
        windows: split.Windows = prep["windows"]
        catalogue: pl.DataFrame = prep["catalogue"]
        tx: pl.DataFrame = prep["tx"]
        items, users = _collected(dataset.items), _collected(dataset.users)
    cat = catalogue.lazy()
    log.info("backtest windows %s, catalogue %d items", windows, catalogue.height)

    truth = test_truth(tx.lazy(), windows, settings.prefilter.placeholder_item).collect()
    sets = evaluation_users(tx.lazy(), truth.lazy(), windows, seed_min_items=cfg.seed_min_items)
    user_sets = {name: frame.collect() for name, frame in sets.items()}
    all_users = user_sets["all"].lazy()

    with _timed(timings, "train_total"):
        train_tx = split.before_test(tx.lazy(), windows)
        data = ModelData(train_tx, cat, items, users)
        model = train_two_stage(data, windows, settings)
        timings.update(model.timings)
    with _timed(timings, "score"):
        two_stage, cands = rank_candidates(model, data, all_users, settings, cfg.curve_k)
    with _timed(timings, "baselines"):
        others = baseline_lists(data, all_users, model, windows, settings) if baselines else {}
        lists = {**others, "two_stage": two_stage}
    if baselines and settings.publish.new_items > 0:
        # The new-items list (#26): never-bought items only, scored like any other list.
        with _timed(timings, "score_new_items"):
            lists["two_stage_new"] = new_item_recommendations(
                model, data, all_users, settings, k=cfg.curve_k
            )
    with _timed(timings, "metrics"):
        rows, curves = metric_rows(lists, truth, user_sets, catalogue.height, cfg)
        diff = precision_diff(lists, truth, user_sets["all"], cfg) if baselines else {}
    with _timed(timings, "candidate_recall"):
        cand_recall = _candidate_recall(
            cands.lazy(), truth.lazy().join(all_users, on=C.USER, how="semi"), all_users
        )
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
        k=cfg.k,
        diff=diff,
        lists=lists,
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
    seed_min_items = settings.evaluation.seed_min_items
    sets = evaluation_users(tx.lazy(), truth.lazy(), windows, seed_min_items=seed_min_items)
    all_users = sets["all"].collect()
    model = stage1.fit_stage1(
        split.before_test(tx.lazy(), windows),
        prep["catalogue"].lazy(),
        settings.candidates,
        placeholder,
    )
    cands = stage1.generate_candidates(model, all_users.lazy(), settings.candidates)
    return candidate_recall(
        cands, truth.lazy().join(all_users.lazy(), on=C.USER, how="semi"), all_users.lazy()
    )
