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
  (:mod:`recsys_batch.evaluation.tifu_knn`), the co-purchase anchor of new items
  (``copurchase_new``: stage 1's co-purchase neighbours the user never bought), and the
  two-stage model.
- Beside them, revenue@k (test-window spend on the listed items) and the discovery metrics
  new_share, repeat_hit, new_hit (:mod:`recsys_batch.evaluation.metrics`).
- ``diff``: paired bootstrap interval of two-stage Precision@k minus each baseline's over the
  "all" users (:mod:`recsys_batch.evaluation.bootstrap`); ``new_hit_diff``: the same for
  new_hit of a model minus its anchor (:data:`recsys_batch.evaluation.rows.NEW_HIT_PAIRS`).

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
from recsys_batch.evaluation.baseline_lists import baseline_lists
from recsys_batch.evaluation.protocol import (
    HeldOut,
    evaluation_users,
    held_out,
    prepare,
    protocol_text,
    test_truth,
)
from recsys_batch.evaluation.rows import metric_rows, new_hit_diffs, precision_diff
from recsys_batch.evaluation.scenario_eval import NEW_ITEMS, scenario_comparison, served_inputs
from recsys_batch.model import split
from recsys_batch.model.model_data import ModelData, TrainedTwoStage
from recsys_batch.model.new_items_ranking import new_item_recommendations
from recsys_batch.model.plan_features import model_horizons, run_plan_tables
from recsys_batch.model.two_stage import rank_candidates, train_two_stage
from recsys_batch.rules import RuleSet

log = logging.getLogger(__name__)

# Defaults for callers without a configuration; a run passes ``settings.evaluation``.
_DEFAULTS = EvaluationConfig()


@dataclass
class BacktestResult:
    """Everything ``recsys evaluate`` prints, writes as JSON and plots."""

    rows: list[dict[str, Any]]
    """One dict per (model, user set): model, user_set, users, precision@k, recall@k,
    map@k, ndcg@k, coverage, revenue@k, new_share, repeat_hit, new_hit (k = :attr:`k`)."""
    candidates: dict[str, Any]
    """Candidate recall of the stage-1 union and each generator on the test window."""
    funnel: pl.DataFrame
    """The prefilter funnel (rule, items, users, rows); empty for the quality gate's backtest
    (``baselines=False``)."""
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
    new_hit_diff: list[dict[str, Any]] = field(default_factory=list)
    """``{"model", "anchor", "mean", "lo", "hi", "users"}``: new_hit of the model minus the
    anchor's over the "all" users, with its paired bootstrap 95% interval."""
    scenario: dict[str, Any] | None = None
    """``recsys evaluate --scenario-file``: the two-stage lists served without and with the
    rules (:func:`~recsys_batch.evaluation.scenario_eval.scenario_comparison`); None without
    a rule set (not in :meth:`to_json`; the origins' JSON carries it)."""

    def precision(self, model: str = "two_stage", user_set: str = "all") -> float:
        """Precision@k of one row (the nightly quality gate reads two_stage/all)."""
        for row in self.rows:
            if row["model"] == model and row["user_set"] == user_set:
                return float(row[f"precision@{self.k}"])
        msg = f"no backtest row for model={model!r}, user_set={user_set!r}"
        raise KeyError(msg)

    @property
    def forward_plan_features(self) -> bool:
        """Whether the two-stage model read the forward plan features (issue #26)."""
        return bool(self.model is not None and self.model.forward_plan_features)

    def to_json(self) -> dict[str, Any]:
        """The machine-readable form of ``recsys evaluate --json``."""
        return {
            "rows": self.rows,
            "diff": self.diff,
            "new_hit_diff": self.new_hit_diff,
            "candidates": self.candidates,
            "protocol": self.protocol,
            "windows": {
                "first_week": self.windows.first_week,
                "history_end": self.windows.history_end,
                "target_end": self.windows.target_end,
                "test_end": self.windows.test_end,
            },
            "catalogue_size": self.catalogue_size,
            "forward_plan_features": self.forward_plan_features,
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
    """Candidate recall of ``users`` against their rows of ``truth``."""
    from recsys_batch.evaluation.candidate_metrics import candidate_recall  # noqa: PLC0415

    return candidate_recall(candidates, truth.join(users, on=C.USER, how="semi"), users)


def run_seeded_backtest(
    dataset: Dataset, settings: Settings, seeds: int, *, rules: RuleSet | None = None
) -> BacktestResult:
    """:func:`run_backtest` with ``seeds`` seed pairs; the result is the configured seeds' run.

    Run ``i`` moves the ALS and the ranker seed by ``i`` (:func:`reseeded`); every run's rows
    are in ``seed_runs`` so that a change can be judged against the seed-to-seed spread of
    Precision@k, not against one draw. The prefilter and split do not depend on a seed and
    are computed once. ``rules`` is measured on the configured seeds' run only.
    """
    prepared = prepare(dataset, settings)
    result = run_backtest(dataset, settings, prepared=prepared, rules=rules)
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


def run_backtest(
    dataset: Dataset,
    settings: Settings,
    *,
    prepared: dict[str, Any] | None = None,
    baselines: bool = True,
    rules: RuleSet | None = None,
    forward_plans: bool | None = None,
) -> BacktestResult:
    """Run the issue-#4 protocol: train, score the test window, compare with the baselines.

    ``prepared`` is :func:`prepare`'s output for the same dataset and settings (computed
    here when None). ``baselines=False`` (the nightly quality gate) measures the two-stage
    model only: no baseline lists, no bootstrap intervals, no prefilter funnel (empty).
    ``forward_plans``: whether the two-stage model may read the forward-looking plan features
    (None: whenever the calendar covers the weeks after the training and the scoring cut;
    False: never, as for a nightly whose served weeks the calendar does not cover).
    ``rules`` (a scenario) also serves the two-stage lists through the rule engine with and
    without them (:mod:`recsys_batch.evaluation.scenario_eval`).

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
        prep = prepared if prepared is not None else prepare(dataset, settings, funnel=baselines)
        windows: split.Windows = prep["windows"]
        catalogue: pl.DataFrame = prep["catalogue"]
        tx: pl.DataFrame = prep["tx"]
        items, users = _collected(dataset.items), _collected(dataset.users)
    log.info("backtest windows %s, catalogue %d items", windows, catalogue.height)

    held = held_out(tx.lazy(), windows, settings.prefilter.placeholder_item)
    truth = held.truth
    user_sets = _user_sets(tx, truth, windows, cfg.seed_min_items)
    all_users = user_sets["all"].lazy()

    with _timed(timings, "train_total"):
        data = model_data(dataset, prep, items, users, settings, forward_plans)
        model = train_two_stage(data, windows, settings)
        timings.update(model.timings)
    ranked, cands, lists = _scored_lists(
        model, data, all_users, held, settings, timings, baselines=baselines, rules=rules
    )
    with _timed(timings, "metrics"):
        rows, curves = metric_rows(lists, held, user_sets, catalogue.height, cfg)
        diff = precision_diff(lists, truth, user_sets["all"], cfg) if baselines else {}
        new_diff = new_hit_diffs(lists, held, user_sets["all"], cfg) if baselines else []
    scenario = None
    if rules is not None:
        with _timed(timings, "scenario"):
            inputs = served_inputs(ranked, lists.get(NEW_ITEMS), data, held, settings)
            scenario = scenario_comparison(inputs, rules, held, user_sets["all"], cfg)
    with _timed(timings, "candidate_recall"):
        cand_recall = _candidate_recall(cands.lazy(), truth.lazy(), all_users)
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
        new_hit_diff=new_diff,
        scenario=scenario,
    )


def _user_sets(
    tx: pl.DataFrame, truth: pl.DataFrame, windows: split.Windows, seed_min_items: int
) -> dict[str, pl.DataFrame]:
    """The evaluated user sets (``protocol.evaluation_users``), read into memory."""
    sets = evaluation_users(tx.lazy(), truth.lazy(), windows, seed_min_items=seed_min_items)
    return {name: frame.collect() for name, frame in sets.items()}


def model_data(
    dataset: Dataset,
    prep: dict[str, Any],
    items: pl.LazyFrame | None,
    users: pl.LazyFrame | None,
    settings: Settings,
    forward_plans: bool | None,
) -> ModelData:
    """What the two-stage model reads: ``prep``'s purchases before the test window, its
    catalogue, and the plan tables when the model reads the forward plan features
    (``plan_features.run_plan_tables``: the same decision as the nightly's)."""
    windows: split.Windows = prep["windows"]
    catalogue = prep["catalogue"].lazy()
    plans, reason = run_plan_tables(
        dataset.plans,
        catalogue.select(C.ITEM),
        model_horizons(windows.history_end, windows.target_end, settings.split),
        forward_plans,
    )
    log.info("forward plan features %s: %s", "on" if plans else "off", reason)
    return ModelData(split.before_test(prep["tx"].lazy(), windows), catalogue, items, users, plans)


def _scored_lists(
    model: TrainedTwoStage,
    data: ModelData,
    all_users: pl.LazyFrame,
    held: HeldOut,
    settings: Settings,
    timings: dict[str, float],
    *,
    baselines: bool,
    rules: RuleSet | None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, pl.DataFrame]]:
    """The lists the rows measure for ``all_users``, each step timed into ``timings``.

    Returns
    -------
    tuple
        ``(ranked, candidates, lists)``: the two-stage top ``evaluation.curve_k``, or top
        ``publish.top_n`` when larger and the scenario ``rules`` are served from it; the candidates
        it was ranked from; model -> top ``evaluation.curve_k`` list (the two-stage model's;
        with ``baselines``, the baselines' and the new-items list).
    """
    curve_k = settings.evaluation.curve_k
    # A scenario serves from the stored top publish.top_n; the rows read the top curve_k.
    depth = curve_k if rules is None else max(curve_k, settings.publish.top_n)
    with _timed(timings, "score"):
        ranked, cands = rank_candidates(model, data, all_users, settings, depth)
        two_stage = ranked.filter(pl.col(C.RANK) <= curve_k)
    with _timed(timings, "baselines"):
        others = {}
        if baselines:
            others = baseline_lists(data, all_users, model, model.windows, settings, held)
        lists = {**others, "two_stage": two_stage}
    if baselines and settings.publish.new_items > 0:
        # The new-items list (#26): never-bought items only, scored like any other list.
        with _timed(timings, "score_new_items"):
            lists[NEW_ITEMS] = new_item_recommendations(model, data, all_users, settings, k=curve_k)
    return ranked, cands, lists


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
