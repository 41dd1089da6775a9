"""How good is the candidate set? Recall per generator and of the union.

Recall here is *micro* recall: the share of all (user, item) test purchases, over every
evaluated user, that are among that user's candidates. Each distinct item a user bought
counts once, so a heavy buyer weighs in proportion to what they bought; the per-user mean
(``recall_user_mean``) is reported next to it. Evaluated users are those of ``truth``: a
user with no candidate row counts with zero hits.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from recsys_batch.data import columns as C

K_UPPER = 5


def _recall(candidates: pl.LazyFrame, truth: pl.LazyFrame, n_users: int) -> dict[str, float]:
    """Micro and per-user-mean recall and mean candidates per evaluated user."""
    hits = truth.join(candidates.select(C.USER, C.ITEM), on=[C.USER, C.ITEM], how="semi")
    per_user = (
        truth.group_by(C.USER)
        .agg(pl.len().alias("_truth"))
        .join(hits.group_by(C.USER).agg(pl.len().alias("_hits")), on=C.USER, how="left")
        .join(candidates.group_by(C.USER).agg(pl.len().alias("_cands")), on=C.USER, how="left")
        .fill_null(0)
        .select(
            pl.col("_hits").sum().alias("hits"),
            pl.col("_truth").sum().alias("truth"),
            (pl.col("_hits") / pl.col("_truth")).mean().alias("user_mean"),
            pl.col("_cands").sum().alias("cands"),
            (pl.min_horizontal(pl.col("_hits"), pl.lit(K_UPPER)) / K_UPPER)
            .mean()
            .alias("p_at_5_upper"),
        )
        .collect()
        .row(0, named=True)
    )
    total = per_user["truth"] or 0
    return {
        "recall": float(per_user["hits"] / total) if total else 0.0,
        "recall_user_mean": float(per_user["user_mean"] or 0.0),
        "mean_candidates": float((per_user["cands"] or 0) / n_users) if n_users else 0.0,
        "precision_at_5_upper_bound": float(per_user["p_at_5_upper"] or 0.0),
    }


def candidate_recall(candidates: pl.LazyFrame, truth: pl.LazyFrame) -> dict[str, Any]:
    """Recall of the candidate set, per generator and for the union.

    Parameters
    ----------
    candidates
        Stage-1 union (schema ``CANDIDATES``).
    truth
        ``user_id, item_id``: the distinct catalogue items each evaluated user bought in the
        test window (duplicates are dropped here).

    Returns
    -------
    dict
        ``{"generators": {gen: {"recall", "recall_user_mean", "mean_candidates"}},
        "union": {"recall", "recall_user_mean", "mean_candidates",
        "precision_at_5_upper_bound"}}``. ``mean_candidates`` is per evaluated user;
        the P@5 upper bound is the mean over users of ``min(5, |truth ∩ candidates|) / 5``.
    """
    truth = truth.select(C.USER, C.ITEM).unique().collect().lazy()
    cands = candidates.join(truth.select(C.USER).unique(), on=C.USER, how="semi").collect().lazy()
    n_users = truth.select(pl.col(C.USER).n_unique()).collect().item()
    generators: dict[str, dict[str, float]] = {}
    for g in C.GENERATORS:
        col = C.rank_col(g)
        if col not in cands.collect_schema().names():
            continue
        r = _recall(cands.filter(pl.col(col).is_not_null()), truth, n_users)
        generators[g] = {
            "recall": r["recall"],
            "recall_user_mean": r["recall_user_mean"],
            "mean_candidates": r["mean_candidates"],
        }
    union = _recall(cands, truth, n_users)
    return {"generators": generators, "union": union}
