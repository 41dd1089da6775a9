"""Signals for first purchases (#26), each alone: the hit rate of its own top 5 new items.

For each origin (default: the validation origins, test weeks 42-45 and 46-49 of the bundled
data; never the final test) stage 1 is refit on everything before the test window, as the
backtest does for scoring, and each signal scores every catalogue item the "all" user never
bought; its top 5 are scored against the test window (hits / (5 x users), the P@5 of the
``two_stage_new`` row). A signal worth a generator should beat the shipped generators' own
top 5 (``als`` and ``copurchase`` are printed as the reference) at both origins.

    python benchmarks/new_item_signals.py            # cuts 45 and 49
    python benchmarks/new_item_signals.py --cuts 45  # one origin

Signals, none of them shipped:

``als[k=v,...]``
    The stage-1 ALS top new items, refit with other ``candidates.als`` settings.
``tried_next_w{W}``
    "Tried next": item x item counts of a first purchase of b in week t by a customer who
    bought a in weeks t-W..t-1, over every customer's history, divided by a's customer-weeks;
    a user's score = the sum over the items of their last W weeks.
``neighbours_recent_w{W}_p{P}``
    Similar customers' recent first purchases: sum over every other customer of
    max(0, cosine of ALS user factors) ** P x [their first purchase of the item falls in the
    last W weeks].
``segment_recent_k{K}_w{W}``
    The same over segments instead of neighbours, which would scale to every customer: K
    k-means clusters of the unit ALS user factors (``scipy.cluster.vq.kmeans2``, seed 42);
    a user's score = the share of their segment's customers whose first purchase of the item
    falls in the last W weeks (``_soft``: every segment weighted by max(0, cosine to its
    centre) ** 32 instead of the user's own segment only).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp
from new_items_variants import print_per_origin  # benchmarks/ is sys.path[0]
from scipy.cluster.vq import kmeans2

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import load_dataset
from recsys_batch.evaluation.origins import cut_after
from recsys_batch.evaluation.protocol import evaluation_users, prepare, test_truth
from recsys_batch.model import split
from recsys_batch.model.candidates import Stage1Model
from recsys_batch.model.model_data import ModelData
from recsys_batch.model.new_items import (
    ChunkInputs,
    _allowed,
    als_scores,
    bought_before,
    copurchase_scores,
    top_new,
)
from recsys_batch.model.two_stage import fit_scoring_stage1

ALS_VARIANTS: dict[str, dict[str, object]] = {
    "factors=32": {"factors": 32},
    "factors=128": {"factors": 128},
    "regularization=10": {"regularization": 10.0},
    "alpha=5": {"alpha": 5.0},
    "iterations=20": {"iterations": 20},
    "weighting=bm25": {"weighting": "bm25"},
    "weighting=tfidf": {"weighting": "tfidf"},
    "interaction=recency": {"interaction": "recency"},
}


def first_weeks(model: Stage1Model, transactions: pl.LazyFrame) -> pl.DataFrame:
    """Every (user row, item column) of stage 1's index with the week of its first purchase."""
    lines = transactions.group_by(C.USER, C.ITEM).agg(pl.col(C.WEEK).min()).collect()
    rows = model.users.to_idx(lines[C.USER].to_numpy())
    cols = model.items.to_idx(lines[C.ITEM].to_numpy())
    keep = (rows >= 0) & (cols >= 0)
    return pl.DataFrame(
        {"row": rows[keep], "col": cols[keep], "week": lines[C.WEEK].to_numpy()[keep]}
    )


def tried_next(
    model: Stage1Model, transactions: pl.LazyFrame, weeks: int, as_of_week: int
) -> np.ndarray:
    """``users x items`` "tried next" scores of every stage-1 user (see the module text)."""
    n_users, n_items = len(model.users), len(model.items)
    lines = transactions.select(C.USER, C.ITEM, C.WEEK).unique().collect()
    rows = model.users.to_idx(lines[C.USER].to_numpy())
    cols = model.items.to_idx(lines[C.ITEM].to_numpy())
    week = lines[C.WEEK].to_numpy().astype(np.int64)
    keep = (rows >= 0) & (cols >= 0)
    rows, cols, week = rows[keep], cols[keep], week[keep]
    span = int(week.max()) + 1
    bought = sp.csr_matrix(
        (np.ones(rows.size, np.float32), (rows * span + week, cols)),
        shape=(n_users * span, n_items),
    )
    first = first_weeks(model, transactions)
    catalogue = np.zeros(n_items, dtype=bool)
    catalogue[model.candidate_items] = True
    first = first.filter(pl.Series(catalogue[first["col"].to_numpy()]))
    counts = sp.csr_matrix((n_items, n_items), dtype=np.float32)
    for lag in range(1, weeks + 1):
        lagged = first.filter(pl.col("week") >= lag)
        tried = sp.csr_matrix(
            (
                np.ones(lagged.height, np.float32),
                (lagged["row"].to_numpy() * span + lagged["week"].to_numpy() - lag, lagged["col"]),
            ),
            shape=(n_users * span, n_items),
        )
        counts = counts + (bought.T @ tried).tocsr()
    per_item = np.asarray(bought.sum(axis=0)).ravel() * weeks
    rate = sp.diags(1.0 / np.maximum(per_item, 1.0)).astype(np.float32) @ counts
    recent = lines.filter(pl.col(C.WEEK) >= as_of_week - weeks)
    r_rows = model.users.to_idx(recent[C.USER].to_numpy())
    r_cols = model.items.to_idx(recent[C.ITEM].to_numpy())
    ok = (r_rows >= 0) & (r_cols >= 0)
    seeds = sp.csr_matrix(
        (np.ones(int(ok.sum()), np.float32), (r_rows[ok], r_cols[ok])), shape=(n_users, n_items)
    )
    return np.asarray((seeds @ rate).todense(), dtype=np.float32)


def neighbours_recent(
    model: Stage1Model, transactions: pl.LazyFrame, weeks: int, power: int, as_of_week: int
) -> np.ndarray:
    """``users x items`` scores of similar customers' recent first purchases (module text)."""
    factors = np.asarray(model.als.user_factors)  # type: ignore[attr-defined]
    unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-9)
    kernel = np.maximum(unit @ unit.T, 0.0) ** power
    np.fill_diagonal(kernel, 0.0)
    first = first_weeks(model, transactions).filter(pl.col("week") >= as_of_week - weeks)
    recent = sp.csr_matrix(
        (np.ones(first.height, np.float32), (first["row"], first["col"])),
        shape=(len(model.users), len(model.items)),
    )
    return np.asarray((recent.T @ kernel.T).T, dtype=np.float32)


def segment_recent(
    model: Stage1Model, transactions: pl.LazyFrame, weeks: int, segments: int, as_of_week: int
) -> dict[str, np.ndarray]:
    """``users x items`` scores of the segment's recent first purchases, hard and soft."""
    factors = np.asarray(model.als.user_factors, dtype=np.float64)  # type: ignore[attr-defined]
    unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-9)
    centres, label = kmeans2(unit, segments, seed=42, minit="++")
    members = sp.csr_matrix(
        (np.ones(label.size), (label, np.arange(label.size))), shape=(segments, label.size)
    )
    first = first_weeks(model, transactions).filter(pl.col("week") >= as_of_week - weeks)
    recent = sp.csr_matrix(
        (np.ones(first.height), (first["row"], first["col"])),
        shape=(len(model.users), len(model.items)),
    )
    sizes = np.maximum(np.asarray(members.sum(axis=1)), 1.0)
    rate = np.asarray((members @ recent).todense()) / sizes
    unit_centres = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-9)
    weight = np.maximum(unit @ unit_centres.T, 0.0) ** 32
    weight /= np.maximum(weight.sum(axis=1, keepdims=True), 1e-12)
    return {"": rate[label].astype(np.float32), "_soft": (weight @ rate).astype(np.float32)}


def origin(settings: Settings, last_week: int) -> dict[str, float]:
    """Each signal's top-5 hit rate of new items at the origin whose data ends at ``last_week``."""
    data_cut = cut_after(load_dataset(settings.data), last_week)
    prep = prepare(data_cut, settings)
    w, tx = prep["windows"], prep["tx"].lazy()
    truth = test_truth(tx, w, settings.prefilter.placeholder_item).collect()
    users = np.sort(evaluation_users(tx, truth.lazy(), w)["all"].collect()[C.USER].to_numpy())
    data = ModelData(split.before_test(tx, w), prep["catalogue"].lazy(), None, None)
    bought = bought_before(data.transactions, w.target_end).collect()
    truth_pairs = set(zip(truth[C.USER].to_list(), truth[C.ITEM].to_list(), strict=True))

    def hit_rate(model: Stage1Model, scores: Callable[[ChunkInputs], np.ndarray]) -> float:
        rows = model.users.to_idx(users)
        inputs = ChunkInputs(model, rows, _allowed(model, users, bought), None)
        r, items, _ = top_new(scores(inputs), inputs.allowed, 5)
        ids = model.items.to_ids(items)
        hits = sum((int(users[a]), int(b)) in truth_pairs for a, b in zip(r, ids, strict=True))
        return hits / (5 * users.size)

    def every_user(table: np.ndarray) -> Callable[[ChunkInputs], np.ndarray]:
        def scores(inputs: ChunkInputs) -> np.ndarray:
            out = np.full((inputs.user_idx.size, table.shape[1]), np.nan, dtype=np.float32)
            known = inputs.user_idx >= 0
            out[known] = table[inputs.user_idx[known]]
            out[out <= 0] = np.nan
            return out

        return scores

    model = fit_scoring_stage1(data, w, settings)
    out = {"als": hit_rate(model, als_scores), "copurchase": hit_rate(model, copurchase_scores)}
    for name, update in ALS_VARIANTS.items():
        als = settings.candidates.als.model_copy(update=update)
        variant = settings.model_copy(
            update={"candidates": settings.candidates.model_copy(update={"als": als})}
        )
        out[f"als[{name}]"] = hit_rate(fit_scoring_stage1(data, w, variant), als_scores)
    for weeks in (1, 2, 4):
        table = tried_next(model, data.transactions, weeks, w.target_end)
        out[f"tried_next_w{weeks}"] = hit_rate(model, every_user(table))
    for weeks in (6, 8, 12):
        for power in (1, 8):
            table = neighbours_recent(model, data.transactions, weeks, power, w.target_end)
            out[f"neighbours_recent_w{weeks}_p{power}"] = hit_rate(model, every_user(table))
    for segments in (10, 30, 100):
        for weeks in (6, 8):
            tables = segment_recent(model, data.transactions, weeks, segments, w.target_end)
            for suffix, table in tables.items():
                out[f"segment_recent_k{segments}_w{weeks}{suffix}"] = hit_rate(
                    model, every_user(table)
                )
    return out


def main() -> None:
    """Print one line per origin and signal."""
    print_per_origin(origin, __doc__, 32)


if __name__ == "__main__":
    main()
