"""Paired bootstrap intervals of a per-user metric difference (#16).

The two models are scored on the same users, so the interval resamples users (with
replacement) and recomputes the mean of the per-user differences for each draw; the 95%
interval is the 2.5th and 97.5th percentile of those means (percentile bootstrap, Efron &
Tibshirani 1993, ch. 13). One set of draws is shared by every baseline of a comparison.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from recsys_batch.data import columns as C

LEVEL = 0.95


def resampled_means(diffs: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Mean of ``diffs`` over ``draws`` resamples of its entries with replacement."""
    if diffs.size == 0:
        return np.zeros(draws)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diffs.size, size=(draws, diffs.size))
    return np.asarray(diffs[idx].mean(axis=1))


def interval(diffs: np.ndarray, draws: int, seed: int, level: float = LEVEL) -> dict[str, float]:
    """``{"mean", "lo", "hi"}``: the observed mean difference and its bootstrap interval."""
    means = resampled_means(diffs, draws, seed)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return {
        "mean": float(diffs.mean()) if diffs.size else 0.0,
        "lo": float(lo),
        "hi": float(hi),
    }


def paired_differences(
    per_user: dict[str, pl.DataFrame],
    metric: str,
    reference: str,
    draws: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Interval of ``reference`` minus every other model of ``per_user`` on ``metric``.

    Parameters
    ----------
    per_user
        model -> one row per evaluated user (``user_id`` and ``metric``); every model is
        scored on the same users.

    Returns
    -------
    dict
        ``{model: {"mean", "lo", "hi", "users"}}`` for each model but ``reference``.
    """
    ref = per_user[reference].select(C.USER, pl.col(metric).alias("_ref"))
    out: dict[str, dict[str, Any]] = {}
    for name, frame in per_user.items():
        if name == reference:
            continue
        paired = ref.join(frame.select(C.USER, pl.col(metric).alias("_other")), on=C.USER)
        paired = paired.sort(C.USER)
        diffs = (paired["_ref"] - paired["_other"]).to_numpy().astype(np.float64)
        out[name] = {**interval(diffs, draws, seed), "users": int(diffs.size)}
    return out
