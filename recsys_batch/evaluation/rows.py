"""The rows of a backtest: every list scored against the held-out window, and the intervals.

:func:`metric_rows` gives one row per (model, user set) with the ranking metrics
(:func:`~recsys_batch.evaluation.metrics.evaluate`) and revenue and discovery
(:func:`~recsys_batch.evaluation.metrics.discovery`); :func:`precision_diff` and
:func:`new_hit_diffs` the paired bootstrap intervals (:mod:`recsys_batch.evaluation.bootstrap`)
over the "all" users.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from recsys_batch.config import EvaluationConfig
from recsys_batch.data import columns as C
from recsys_batch.evaluation.bootstrap import paired_differences, paired_rate_difference
from recsys_batch.evaluation.metrics import (
    NEW_HITS,
    NEW_SLOTS,
    discovery,
    evaluate,
    metric_key,
    per_user_metrics,
    precision_curve,
    slot_outcomes,
)
from recsys_batch.evaluation.protocol import HeldOut

MODELS = (
    "popular",
    "own_purchases",
    "als",
    "tifu_knn",
    "copurchase_new",
    "two_stage",
    "two_stage_new",
)
"""Row order; a list in the backtest's ``lists`` under one of these names gets its rows."""
USER_SETS = ("all", "seed")
NEW_HIT_PAIRS = (("two_stage", "copurchase_new"), ("two_stage_new", "copurchase_new"))
"""(model, anchor): new_hit of the model minus the anchor's, with its interval, for every
pair whose two lists the backtest has (``two_stage_new``: the new-items list, #26)."""


def _outcomes(recs: pl.DataFrame, held: HeldOut, users: pl.DataFrame, k: int) -> pl.LazyFrame:
    return slot_outcomes(
        recs.lazy(), held.truth.lazy(), held.bought.lazy(), held.spend.lazy(), users.lazy(), k
    )


def metric_rows(
    lists: dict[str, pl.DataFrame],
    held: HeldOut,
    user_sets: dict[str, pl.DataFrame],
    catalogue_size: int,
    cfg: EvaluationConfig,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """One metrics row per (model, user set) in ``MODELS`` x ``USER_SETS`` order, and the
    precision@k curves (k = 1..``cfg.curve_k``) per model and user set.

    A row: ``model``, ``user_set``, ``users``, ``precision@k``, ``recall@k``, ``map@k``,
    ``ndcg@k``, ``coverage``, ``revenue@k``, ``new_share``, ``repeat_hit``, ``new_hit``.
    """
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[float]]] = {}
    truth = held.truth.lazy()
    for model_name in (m for m in MODELS if m in lists):
        recs = lists[model_name]
        curves[model_name] = {}
        for set_name in USER_SETS:
            set_users = user_sets[set_name]
            metrics = evaluate(
                recs.lazy(), truth, set_users.lazy(), k=cfg.k, catalogue_size=catalogue_size
            )
            found = discovery(_outcomes(recs, held, set_users, cfg.k), cfg.k)
            rows.append({"model": model_name, "user_set": set_name, **metrics, **found})
            curves[model_name][set_name] = precision_curve(
                recs.lazy(), truth, set_users.lazy(), cfg.curve_k
            )
    return rows, curves


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


def new_hit_diffs(
    lists: dict[str, pl.DataFrame], held: HeldOut, users: pl.DataFrame, cfg: EvaluationConfig
) -> list[dict[str, Any]]:
    """new_hit of each ``NEW_HIT_PAIRS`` model minus its anchor's over ``users``, with the
    paired bootstrap interval (new slots pooled over users; the same draws as the P@k ones).

    Returns
    -------
    list of dict
        ``{"model", "anchor", "mean", "lo", "hi", "users"}`` per pair whose lists exist.
    """
    out = []
    for model, anchor in NEW_HIT_PAIRS:
        if model not in lists or anchor not in lists:
            continue
        per_user = {
            name: _outcomes(lists[name], held, users, cfg.k).collect() for name in (model, anchor)
        }
        out.append(
            paired_rate_difference(
                per_user,
                model,
                anchor,
                (NEW_HITS, NEW_SLOTS),
                cfg.bootstrap_draws,
                cfg.bootstrap_seed,
            )
        )
    return out
