"""How good is the candidate set? Recall per generator and of the union.

Recall here is *micro* recall: the share of all (user, item) test purchases, over every
evaluated user, that are among that user's candidates. Each distinct item a user bought
counts once, so a heavy buyer weighs in proportion to what they bought; the per-user mean
(``recall_user_mean``, over users who bought a catalogue item) is reported next to it.

Evaluated users are ``users`` when given (the backtest passes its "all" users, the same
users Precision@5 is averaged over), else those of ``truth``. The Precision@5 upper bound
and the mean candidate count are averaged over every evaluated user: one who bought no
catalogue item in the test window has a bound of 0, as their Precision@5 is 0. A user with no
candidate row counts with zero hits.

A generator's recall counts the items it proposed that survived the union's cap
(``candidates.max_per_user``, own purchases first), not what it would propose alone.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from recsys_batch.data import columns as C

K_UPPER = 5


def _recall(candidates: pl.LazyFrame, truth: pl.LazyFrame, n_users: int) -> dict[str, float]:
    """Micro and per-user-mean recall, mean candidates and the P@5 bound per evaluated user.

    ``candidates`` holds only evaluated users; the ``n_users`` evaluated users include those
    absent from ``truth`` (they add 0 hits).
    """
    hits = truth.join(candidates.select(C.USER, C.ITEM), on=[C.USER, C.ITEM], how="semi")
    per_user = (
        truth.group_by(C.USER)
        .agg(pl.len().alias("_truth"))
        .join(hits.group_by(C.USER).agg(pl.len().alias("_hits")), on=C.USER, how="left")
        .fill_null(0)
        .select(
            pl.col("_hits").sum().alias("hits"),
            pl.col("_truth").sum().alias("truth"),
            (pl.col("_hits") / pl.col("_truth")).mean().alias("user_mean"),
            (pl.min_horizontal(pl.col("_hits"), pl.lit(K_UPPER)) / K_UPPER)
            .sum()
            .alias("p_at_5_upper_sum"),
        )
        .collect()
        .row(0, named=True)
    )
    n_cands = candidates.select(pl.len()).collect().item()
    total = per_user["truth"] or 0
    return {
        "recall": float(per_user["hits"] / total) if total else 0.0,
        "recall_user_mean": float(per_user["user_mean"] or 0.0),
        "mean_candidates": float(n_cands / n_users) if n_users else 0.0,
        "precision_at_5_upper_bound": (
            float((per_user["p_at_5_upper_sum"] or 0.0) / n_users) if n_users else 0.0
        ),
    }


def candidate_recall(
    candidates: pl.LazyFrame, truth: pl.LazyFrame, users: pl.LazyFrame | None = None
) -> dict[str, Any]:
    """Recall of the candidate set, per generator and for the union.

    Parameters
    ----------
    candidates
        Stage-1 union (schema ``CANDIDATES``).
    truth
        ``user_id, item_id``: the distinct catalogue items each evaluated user bought in the
        test window (duplicates are dropped here).
    users
        ``user_id``: the evaluated users (default: those of ``truth``); truth rows of other
        users are ignored.

    Returns
    -------
    dict
        ``{"generators": {gen: {"recall", "recall_user_mean", "mean_candidates"}},
        "union": {"recall", "recall_user_mean", "mean_candidates",
        "precision_at_5_upper_bound"}}``. ``mean_candidates`` is per evaluated user;
        the P@5 upper bound is the mean over evaluated users of
        ``min(5, |truth ∩ candidates|) / 5``.
    """
    truth = truth.select(C.USER, C.ITEM).unique()
    evaluated = (users if users is not None else truth).select(C.USER).unique().collect()
    truth = truth.join(evaluated.lazy(), on=C.USER, how="semi").collect().lazy()
    cands = candidates.join(evaluated.lazy(), on=C.USER, how="semi").collect().lazy()
    n_users = evaluated.height
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
