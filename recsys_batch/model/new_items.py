"""New items per customer (#26): catalogue items a user never bought, proposed and ranked.

Candidates (:func:`new_item_candidates`) come from generators that score every catalogue
item for a chunk of users at once (dense ``users x items`` arrays, like implicit's
``recommend``), after every item the user bought before the cut is masked out:

``copurchase`` (reason ``bought_with``)
    Co-purchase neighbours of the items of the user's last baskets (stage 1's seeds times
    its item x item similarity).
``als`` (reason ``similar_customers``)
    The stage-1 ALS model's score (user factor . item factor).
``category`` (reason ``category``)
    The user's share of purchases in the item's group (``new_items.category_level``) times
    the item's share of that group's buyers: popular items of the user's favourite groups.
``trend`` (reason ``trending``)
    Catalogue items by buyers over the last ``candidates.trend_weeks`` weeks.
item lists (e.g. ``promoted``, reason ``promoted``)
    Any ``item_id, score`` list passed as ``item_lists`` (the promotions of the weeks the
    list is served, from the plan itself) is a generator of its own, with its own quota.

"Bought" is every (user, item) of the transactions before the cut, whatever stage 1 was
fit on, so an item bought in the stage-2 window is never new at scoring time.

The union keeps per user the ``new_items.max_per_user`` items of best relative rank
(rank / quota, as the stage-1 union); each row carries every generator's score and rank,
which become ranker features next to the stage-2 families (:mod:`new_items_ranking`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_batch.config import NewItemsConfig
from recsys_batch.data import columns as C
from recsys_batch.model.candidates import Stage1Model

GENERATOR_REASONS = {
    "promoted": "promoted",
    "copurchase": "bought_with",
    "als": "similar_customers",
    "category": "category",
    "trend": "trending",
}
"""Reason text of each generator, in the order that breaks ties of evidence."""
REASON = "reason"
_BEST = "_best"


@dataclass(frozen=True)
class ChunkInputs:
    """What the generators read for one chunk of users, in stage 1's index space."""

    model: Stage1Model
    user_idx: np.ndarray
    """Row of each user in ``model`` (-1: unknown to stage 1)."""
    allowed: np.ndarray
    """``users x items`` bool: a catalogue item the user never bought."""
    groups: sp.csr_matrix | None
    """``items x groups`` indicator of ``new_items.category_level`` (None: no item table)."""


Scorer = Callable[[ChunkInputs], np.ndarray | None]
"""A generator: dense ``users x items`` scores of a chunk (higher = better, NaN = none)."""


def _known_rows(inputs: ChunkInputs, values: np.ndarray) -> np.ndarray:
    """``values`` (one row per known user) spread to every user, NaN for unknown ones."""
    out = np.full((inputs.user_idx.size, values.shape[1]), np.nan, dtype=np.float32)
    known = inputs.user_idx >= 0
    out[known] = values
    return out


def copurchase_scores(inputs: ChunkInputs) -> np.ndarray:
    """Seeds of the user's last baskets times the co-purchase similarity (0: none)."""
    rows = inputs.user_idx[inputs.user_idx >= 0]
    scores = (inputs.model.seeds[rows] @ inputs.model.similarity).toarray().astype(np.float32)
    scores[scores <= 0] = np.nan
    return _known_rows(inputs, scores)


def als_scores(inputs: ChunkInputs) -> np.ndarray:
    """User factor . item factor of the stage-1 ALS model."""
    als = inputs.model.als
    users = np.asarray(als.user_factors)  # type: ignore[attr-defined]
    items = np.asarray(als.item_factors)  # type: ignore[attr-defined]
    rows = inputs.user_idx[inputs.user_idx >= 0]
    return _known_rows(inputs, (users[rows] @ items.T).astype(np.float32))


def category_scores(inputs: ChunkInputs) -> np.ndarray | None:
    """User's share of catalogue purchases in the item's group x item's share of its buyers."""
    if inputs.groups is None:
        return None
    model, groups = inputs.model, inputs.groups
    rows = inputs.user_idx[inputs.user_idx >= 0]
    bought = model.user_items[rows][:, model.candidate_items]
    in_group = (bought @ groups[model.candidate_items]).toarray().astype(np.float32)
    share = in_group / np.maximum(in_group.sum(axis=1, keepdims=True), 1e-9)
    buyers = np.zeros(len(model.items), dtype=np.float32)
    known = model.items.to_idx(model.popular[C.ITEM].to_numpy())
    buyers[known[known >= 0]] = model.popular[C.SCORE].to_numpy()[known >= 0]
    group_buyers = np.asarray(groups.T @ buyers).ravel()
    item_share = buyers / np.maximum(np.asarray(groups @ group_buyers).ravel(), 1e-9)
    scores = np.asarray((sp.csr_matrix(share) @ groups.T).todense(), dtype=np.float32) * item_share
    scores[scores <= 0] = np.nan
    return _known_rows(inputs, scores)


def list_scores(ranked: pl.DataFrame) -> Scorer:
    """A generator proposing the same ``item_id, score`` list to every user (trend, promoted)."""

    def scores(inputs: ChunkInputs) -> np.ndarray:
        model = inputs.model
        vector = np.full(len(model.items), np.nan, dtype=np.float32)
        idx = model.items.to_idx(ranked[C.ITEM].to_numpy())
        vector[idx[idx >= 0]] = ranked[C.SCORE].cast(pl.Float32).to_numpy()[idx >= 0]
        return np.broadcast_to(vector, (inputs.user_idx.size, vector.size)).copy()

    return scores


def top_new(
    scores: np.ndarray, allowed: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``n`` best allowed finite scores: ``(row, item_idx, score)``, best first.

    Ties: the lower item index (ascending item id) first.
    """
    # Negated: lower is better, and a masked or missing score is +inf.
    neg = np.where(allowed & np.isfinite(scores), -scores, np.inf)
    n_rows, n_items = neg.shape
    k = min(n, n_items)
    if k <= 0 or n_rows == 0:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32)
    # Only the entries at least as good as each row's k-th best can be in its top k: a
    # partition finds that threshold (from the low end: near the high end, numpy's select
    # slowed down ten times on the many equal masked values), and the few survivors
    # (row-major, so by item within a row) are stably sorted by (row, score). That is the
    # order a stable sort of every item's score gave, ties included, in 40% of its time
    # over the bundled nightly's calls.
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1, None]
    rows, items = np.nonzero((neg <= kth) & np.isfinite(neg))
    best = neg[rows, items]
    order = np.lexsort((best, rows))
    rows, items, best = rows[order], items[order], best[order]
    first_of_row = np.searchsorted(rows, rows)  # rows is sorted: where each row starts
    keep = np.arange(rows.size) - first_of_row < k
    return rows[keep], items[keep], (-best[keep]).astype(np.float32)


def bought_before(transactions: pl.LazyFrame, as_of_week: int) -> pl.LazyFrame:
    """Every distinct ``user_id, item_id`` bought in any week before ``as_of_week``."""
    return transactions.filter(pl.col(C.WEEK) < as_of_week).select(C.USER, C.ITEM).unique()


def group_matrix(
    model: Stage1Model, items: pl.DataFrame | None, level: str
) -> sp.csr_matrix | None:
    """``items x groups`` indicator of each item's ``level`` (None: no table or column)."""
    if items is None or level not in items.columns:
        return None
    table = items.select(C.ITEM, pl.col(level).cast(pl.String)).unique(C.ITEM).drop_nulls()
    idx = model.items.to_idx(table[C.ITEM].to_numpy())
    codes = (table[level].rank("dense") - 1).cast(pl.Int64).to_numpy()
    known = idx >= 0
    n_groups = int(codes.max()) + 1 if codes.size else 0
    return sp.csr_matrix(
        (np.ones(int(known.sum()), dtype=np.float32), (idx[known], codes[known])),
        shape=(len(model.items), n_groups),
    )


def generator_quotas(cfg: NewItemsConfig, item_lists: Mapping[str, pl.DataFrame]) -> dict[str, int]:
    """Items per user of each generator (the item lists share ``cfg.n_list``)."""
    quotas = {"copurchase": cfg.n_copurchase, "als": cfg.n_als, "category": cfg.n_category}
    quotas["trend"] = cfg.n_trend
    quotas.update(dict.fromkeys(item_lists, cfg.n_list))
    return {name: n for name, n in quotas.items() if n > 0}


def _allowed(model: Stage1Model, user_ids: np.ndarray, bought: pl.DataFrame) -> np.ndarray:
    """``users x items``: catalogue items the user never bought (``bought`` pairs)."""
    allowed = np.zeros((user_ids.size, len(model.items)), dtype=bool)
    allowed[:, model.candidate_items] = True
    pairs = bought.filter(pl.col(C.USER).is_in(pl.Series(user_ids).implode()))
    rows = np.searchsorted(user_ids, pairs[C.USER].to_numpy())
    cols = model.items.to_idx(pairs[C.ITEM].to_numpy())
    keep = cols >= 0
    allowed[rows[keep], cols[keep]] = False
    return allowed


def chunk_generated(
    model: Stage1Model,
    user_ids: np.ndarray,
    bought: pl.DataFrame,
    groups: sp.csr_matrix | None,
    scorers: Mapping[str, Scorer],
    quotas: Mapping[str, int],
) -> pl.DataFrame:
    """``GENERATED`` rows of one chunk of sorted ``user_ids``: each generator's top new items."""
    user_idx = model.users.to_idx(user_ids)
    inputs = ChunkInputs(model, user_idx, _allowed(model, user_ids, bought), groups)
    parts = []
    for name, scorer in scorers.items():
        scores = scorer(inputs)
        if scores is None:
            continue
        rows, items, values = top_new(scores, inputs.allowed, quotas[name])
        parts.append(
            pl.DataFrame(
                {
                    C.USER: pl.Series(user_ids[rows], dtype=pl.Int64),
                    C.ITEM: pl.Series(model.items.to_ids(items), dtype=pl.Int64),
                    C.GENERATOR: pl.Series([name] * rows.size, dtype=pl.String),
                    C.SCORE: pl.Series(values, dtype=pl.Float32),
                }
            ).with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(C.USER).alias(C.RANK))
        )
    if not parts:
        return pl.DataFrame(schema=C.GENERATED)
    return pl.concat(parts)


def scorers_for(model: Stage1Model, item_lists: Mapping[str, pl.DataFrame]) -> dict[str, Scorer]:
    """The generators by name: per-user ones, trend, then each item list (promotions)."""
    scorers: dict[str, Scorer] = {
        "copurchase": copurchase_scores,
        "als": als_scores,
        "category": category_scores,
        "trend": list_scores(model.trend),
    }
    scorers.update({name: list_scores(ranked) for name, ranked in item_lists.items()})
    return scorers


def union_new(
    generated: pl.LazyFrame, quotas: Mapping[str, int], max_per_user: int
) -> pl.LazyFrame:
    """One row per (user, item): every generator's score and rank, ``n_generators``,
    ``reason``; at most ``max_per_user`` per user by best relative rank (rank / quota).

    The reason is the generator of the best relative rank (ties: ``GENERATOR_REASONS``
    order), as text.
    """
    names = list(quotas)
    aggs: list[pl.Expr] = []
    for g in names:
        is_g = pl.col(C.GENERATOR) == g
        aggs.append(pl.when(is_g).then(pl.col(C.SCORE)).max().alias(C.score_col(g)))
        aggs.append(pl.when(is_g).then(pl.col(C.RANK)).min().alias(C.rank_col(g)))
    order = {g: i for i, g in enumerate([*GENERATOR_REASONS, *names])}
    evidence = (
        generated.with_columns(
            (
                pl.col(C.RANK).cast(pl.Float64)
                / pl.col(C.GENERATOR).replace_strict(quotas, return_dtype=pl.Float64)
            ).alias(_BEST),
            pl.col(C.GENERATOR).replace_strict(order, return_dtype=pl.Int32).alias("_tie"),
        )
        .sort([C.USER, C.ITEM, _BEST, "_tie"])
        .group_by(C.USER, C.ITEM, maintain_order=True)
        .agg(
            *aggs,
            pl.len().cast(pl.UInt8).alias(C.N_GENERATORS),
            pl.col(_BEST).first(),
            pl.col(C.GENERATOR)
            .first()
            .replace_strict({g: GENERATOR_REASONS.get(g, g) for g in names}, return_dtype=pl.String)
            .alias(REASON),
        )
    )
    return (
        evidence.sort(
            [C.USER, _BEST, C.N_GENERATORS, C.ITEM], descending=[False, False, True, False]
        )
        .filter(pl.int_range(pl.len()).over(C.USER) < max_per_user)
        .drop(_BEST)
    )


def new_item_candidates(
    model: Stage1Model,
    users: pl.LazyFrame,
    transactions: pl.LazyFrame,
    as_of_week: int,
    items: pl.LazyFrame | None,
    cfg: NewItemsConfig,
    *,
    chunk_users: int = 2000,
    item_lists: Mapping[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """New-item candidates of ``users``: catalogue items they never bought before the cut.

    Parameters
    ----------
    model
        Stage 1 fit on the purchases before the cut (or a slice of it holding ``users``).
    transactions
        Purchases; every (user, item) of ``week < as_of_week`` is "bought" and never proposed.
    items
        Product attributes (the category generator's groups), or None.
    item_lists
        Extra generators proposing one ``item_id, score`` list to everyone (``promoted``).

    Returns
    -------
    polars.DataFrame
        ``user_id, item_id``, ``{generator}_score``/``_rank`` for each generator of
        :func:`generator_quotas`, ``n_generators``, ``reason``; sorted by user, then best
        relative rank.
    """
    lists = dict(item_lists or {})
    quotas = generator_quotas(cfg, lists)
    scorers = {g: s for g, s in scorers_for(model, lists).items() if g in quotas}
    user_ids = np.sort(
        users.select(pl.col(C.USER).cast(pl.Int64))
        .drop_nulls()
        .unique()
        .collect()[C.USER]
        .to_numpy()
    )
    bought = (
        bought_before(transactions, as_of_week)
        .join(pl.LazyFrame({C.USER: user_ids}), on=C.USER, how="semi")
        .collect()
    )
    groups = group_matrix(model, items.collect() if items is not None else None, cfg.category_level)
    step = max(chunk_users, 1)
    parts = [
        union_new(
            chunk_generated(
                model, user_ids[start : start + step], bought, groups, scorers, quotas
            ).lazy(),
            quotas,
            cfg.max_per_user,
        )
        for start in range(0, user_ids.size, step)
    ]
    schema = pl.Schema(
        {
            C.USER: pl.Int64,
            C.ITEM: pl.Int64,
            **{
                c: t
                for g in quotas
                for c, t in ((C.score_col(g), pl.Float32), (C.rank_col(g), pl.Int32))
            },
            C.N_GENERATORS: pl.UInt8,
            REASON: pl.String,
        }
    )
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat(pl.collect_all(parts)).select(list(schema)).cast(schema)
