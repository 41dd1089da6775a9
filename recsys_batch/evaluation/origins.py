"""The backtest at several rolling origins (``recsys evaluate --origins N``, #16).

Origin ``j`` (0 = newest) is today's single backtest run on the data cut after week
``W - j * evaluation.origin_step_weeks`` (W = newest week): its test window is the 4 weeks
ending at that week, and its catalogue, stage-1 history, stage-2 window, features and
baselines are computed exactly as for the newest origin, from the weeks before that test
window only. Nothing at or after an origin's test window reaches its models (the rows after
the window are dropped before anything runs; the window itself is only the truth).

Protocol (docs/evaluation.md): the older origins are the validation origins, where every
model, feature and hyper-parameter choice is made; the newest origin is the final test,
reported and never tuned on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import Dataset
from recsys_batch.evaluation.backtest import BacktestResult, run_backtest, run_seeded_backtest
from recsys_batch.model import split
from recsys_batch.rules import RuleSet

log = logging.getLogger(__name__)

FINAL_TEST = "final test"
VALIDATION = "validation"


def origin_cuts(dataset: Dataset, origins: int, step_weeks: int) -> list[int]:
    """The last week of each origin's data, newest first (``W, W - step, ...``)."""
    _, last_week = split.week_range(dataset.transactions)
    return [last_week - j * step_weeks for j in range(origins)]


def cut_after(dataset: Dataset, last_week: int) -> Dataset:
    """``dataset`` without the purchases after ``last_week`` (items and users unchanged)."""
    return Dataset(
        dataset.transactions.filter(pl.col(C.WEEK) <= last_week),
        dataset.items,
        dataset.users,
        name=dataset.name,
    )


@dataclass
class OriginsResult:
    """One :class:`BacktestResult` per origin, newest (the final test) first."""

    results: list[BacktestResult]

    @property
    def newest(self) -> BacktestResult:
        """The final-test origin."""
        return self.results[0]

    def mean_rows(self) -> list[dict[str, Any]]:
        """Mean of every metric per (model, user set) over the origins (``users``: mean)."""
        frame = pl.DataFrame([row for result in self.results for row in result.rows])
        metrics = [c for c in frame.columns if c not in ("model", "user_set")]
        return (
            frame.group_by("model", "user_set", maintain_order=True)
            .agg(pl.col(metrics).mean(), pl.len().alias("origins"))
            .to_dicts()
        )

    def to_json(self) -> dict[str, Any]:
        """:meth:`BacktestResult.to_json` of the newest origin plus ``origins`` and ``mean``."""
        return {
            **self.newest.to_json(),
            "origins": [
                {
                    "test_weeks": holdout_weeks(result.windows),
                    "role": FINAL_TEST if i == 0 else VALIDATION,
                    "rows": result.rows,
                    "diff": result.diff,
                    "new_hit_diff": result.new_hit_diff,
                }
                for i, result in enumerate(self.results)
            ],
            "mean_over_origins": self.mean_rows(),
            **({"scenario": self.scenario_json()} if self.newest.scenario is not None else {}),
        }

    def scenario_json(self) -> dict[str, Any]:
        """``{"rules", "k", "origins": [...]}``: per origin (newest first) its test weeks,
        role and the plain and scenario answers side by side (``--scenario-file``)."""
        shared = ("rules", "k")
        newest = self.newest.scenario or {}
        return {
            **{key: newest[key] for key in shared if key in newest},
            "origins": [
                {
                    "test_weeks": holdout_weeks(result.windows),
                    "role": FINAL_TEST if i == 0 else VALIDATION,
                    **{k: v for k, v in (result.scenario or {}).items() if k not in shared},
                }
                for i, result in enumerate(self.results)
            ],
        }


def holdout_weeks(windows: split.Windows) -> list[int]:
    """``[first, last]`` week of the test window."""
    return [windows.target_end, (windows.test_end or windows.target_end) - 1]


def run_origins(
    dataset: Dataset,
    settings: Settings,
    origins: int,
    *,
    seeds: int = 1,
    rules: RuleSet | None = None,
) -> OriginsResult:
    """The backtest at ``origins`` origins ``evaluation.origin_step_weeks`` apart.

    ``seeds`` > 1 repeats the newest origin with that many seed pairs
    (:func:`~recsys_batch.evaluation.backtest.run_seeded_backtest`). ``rules`` (a scenario)
    is measured at every origin (:mod:`recsys_batch.evaluation.scenario_eval`).
    """
    valid = Dataset(
        dataset.transactions.filter(pl.col(C.QTY) >= 0), dataset.items, dataset.users, dataset.name
    )
    cuts = origin_cuts(valid, max(origins, 1), settings.evaluation.origin_step_weeks)
    results = []
    for j, last_week in enumerate(cuts):
        data = cut_after(valid, last_week)
        result = (
            run_seeded_backtest(data, settings, seeds, rules=rules)
            if j == 0
            else run_backtest(data, settings, rules=rules)
        )
        log.info("origin %d: test weeks %s", j, holdout_weeks(result.windows))
        results.append(result)
    return OriginsResult(results)
