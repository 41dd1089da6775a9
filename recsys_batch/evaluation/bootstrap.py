"""Paired bootstrap intervals of a per-user metric difference (#16).

The two models are scored on the same users, so the interval resamples users (with
replacement) and recomputes the mean of the per-user differences for each draw; the 95%
interval is the 2.5th and 97.5th percentile of those means (percentile bootstrap, Efron &
Tibshirani 1993, ch. 13). One set of draws is shared by every baseline of a comparison.

A hit *rate* (hits / slots, slots pooled over users: :func:`paired_rate_difference`) is
resampled the same way, by user with the same draws, and recomputed as a ratio of sums in
each draw, so a user with more slots weighs more, as in the observed rate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from recsys_batch.data import columns as C

LEVEL = 0.95


def resampled_users(n_users: int, draws: int, seed: int) -> np.ndarray:
    """``draws`` x ``n_users`` positions drawn with replacement (one row per resample)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_users, size=(draws, n_users))


def resampled_means(diffs: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Mean of ``diffs`` over ``draws`` resamples of its entries with replacement."""
    if diffs.size == 0:
        return np.zeros(draws)
    return np.asarray(diffs[resampled_users(diffs.size, draws, seed)].mean(axis=1))


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def interval(diffs: np.ndarray, draws: int, seed: int, level: float = LEVEL) -> dict[str, float]:
    """``{"mean", "lo", "hi"}``: the observed mean difference and its bootstrap interval."""
    lo, hi = _percentiles(resampled_means(diffs, draws, seed), level)
    return {"mean": float(diffs.mean()) if diffs.size else 0.0, "lo": lo, "hi": hi}


def rate_difference_interval(
    hits: np.ndarray, slots: np.ndarray, draws: int, seed: int, level: float = LEVEL
) -> dict[str, float | None]:
    """Rate of model 0 minus model 1, ``sum(hits[:, m]) / sum(slots[:, m])``, and its interval.

    ``hits`` and ``slots`` have one row per user and one column per model (paired by user).
    A resample in which either model has no slot is left out of the percentiles; every
    value is None when a model has no slot at all.
    """
    total = slots.sum(axis=0)
    if slots.shape[0] == 0 or not np.all(total > 0):
        return {"mean": None, "lo": None, "hi": None}
    observed = hits.sum(axis=0) / total
    idx = resampled_users(slots.shape[0], draws, seed)
    # Summing per draw one model at a time keeps memory at draws x users, not x models.
    draw_hits = np.stack([hits[:, m][idx].sum(axis=1) for m in (0, 1)], axis=1)
    draw_slots = np.stack([slots[:, m][idx].sum(axis=1) for m in (0, 1)], axis=1)
    defined = np.all(draw_slots > 0, axis=1)
    mean = float(observed[0] - observed[1])
    if not defined.any():
        return {"mean": mean, "lo": None, "hi": None}
    rates = draw_hits[defined] / draw_slots[defined]
    lo, hi = _percentiles(rates[:, 0] - rates[:, 1], level)
    return {"mean": mean, "lo": lo, "hi": hi}


def paired_rate_difference(
    per_user: dict[str, pl.DataFrame],
    model: str,
    anchor: str,
    columns: tuple[str, str],
    draws: int,
    seed: int,
) -> dict[str, Any]:
    """Interval of ``model``'s hit rate minus ``anchor``'s, slots pooled over users.

    Parameters
    ----------
    per_user
        model -> one row per evaluated user: ``user_id`` and the ``columns`` ``(hits,
        slots)`` counts; both models are scored on the same users (paired by ``user_id``).

    Returns
    -------
    dict
        ``{"model", "anchor", "mean", "lo", "hi", "users"}`` (None rates: see
        :func:`rate_difference_interval`).
    """
    hits_col, slots_col = columns
    paired = (
        per_user[model]
        .select(C.USER, pl.col(hits_col).alias("h0"), pl.col(slots_col).alias("s0"))
        .join(
            per_user[anchor].select(
                C.USER, pl.col(hits_col).alias("h1"), pl.col(slots_col).alias("s1")
            ),
            on=C.USER,
        )
        .sort(C.USER)
    )
    hits = paired.select("h0", "h1").to_numpy().astype(np.float64)
    slots = paired.select("s0", "s1").to_numpy().astype(np.float64)
    found = rate_difference_interval(hits, slots, draws, seed)
    return {"model": model, "anchor": anchor, **found, "users": paired.height}


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
