"""The data the backtest protocol defines: windows, catalogue, test truth and user sets,
and the protocol in words (:func:`protocol_text`).

Shared by ``recsys evaluate`` (:mod:`recsys_batch.evaluation.backtest`), the candidate
recall and the benchmarks, so every one of them evaluates the same users on the same truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from recsys_batch.config import EvaluationConfig, Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import Dataset
from recsys_batch.model import split
from recsys_batch.model.prefilter import FUNNEL, apply_catalogue, prefilter

_DEFAULTS = EvaluationConfig()


def evaluation_users(
    tx: pl.LazyFrame,
    test_truth: pl.LazyFrame,
    windows: split.Windows,
    *,
    seed_min_items: int = _DEFAULTS.seed_min_items,
) -> dict[str, pl.LazyFrame]:
    """The "all" and "seed" user sets of the protocol (one ``user_id`` column each).

    ``tx`` holds every purchase (any item); ``test_truth`` the distinct catalogue items
    bought in the test window; a "seed" user bought at least ``seed_min_items`` of them.
    """
    seen_before = split.before_test(tx, windows).select(C.USER).unique()
    all_users = (
        split.test_window(tx, windows)
        .select(C.USER)
        .unique()
        .join(seen_before, on=C.USER, how="semi")
    )
    seed = (
        test_truth.group_by(C.USER)
        .agg(pl.col(C.ITEM).n_unique().alias("_n"))
        .filter(pl.col("_n") >= seed_min_items)
        .select(C.USER)
        .join(all_users, on=C.USER, how="semi")
    )
    return {"all": all_users, "seed": seed}


def prepare(dataset: Dataset, settings: Settings, *, funnel: bool = True) -> dict[str, Any]:
    """Windows, catalogue, funnel and catalogue-applied transactions of the backtest.

    Negative quantities (returns) are dropped here, whether or not validation ran first.
    ``funnel=False`` (the nightly's quality gate, which reports none) leaves the funnel's
    per-rule counts out, an empty frame of schema ``FUNNEL``: they take a pass over every
    line of their own, more time than the catalogue itself.
    """
    raw = dataset.transactions.filter(pl.col(C.QTY) >= 0)
    first_week, last_week = split.week_range(raw)
    windows = split.backtest_windows(first_week, last_week, settings.split)
    pre = prefilter(split.before_test(raw, windows), dataset.items, settings.prefilter)
    catalogue = pre.catalogue.collect()
    funnel_rows = pre.funnel.collect() if funnel else pl.DataFrame(schema=FUNNEL)
    tx = apply_catalogue(raw, catalogue.lazy(), settings.prefilter).collect()
    return {
        "raw": raw,
        "windows": windows,
        "catalogue": catalogue,
        "funnel": funnel_rows,
        "tx": tx,
    }


def test_truth(tx: pl.LazyFrame, windows: split.Windows, placeholder: int) -> pl.LazyFrame:
    """Distinct catalogue items each user bought in the test window."""
    return (
        split.test_window(tx, windows)
        .filter(pl.col(C.ITEM) != placeholder)
        .select(C.USER, C.ITEM)
        .unique()
    )


def bought_before(tx: pl.LazyFrame, windows: split.Windows) -> pl.LazyFrame:
    """Distinct ``user_id, item_id`` pairs bought in any week before the test window.

    An item of a customer's list that is not among them is *new* to the customer
    (docs/evaluation.md). ``tx`` is catalogue-applied, so catalogue items keep their ids.
    """
    return split.before_test(tx, windows).select(C.USER, C.ITEM).unique()


def spend_in_test_window(tx: pl.LazyFrame, windows: split.Windows) -> pl.LazyFrame:
    """Each user's test-window spend per item: ``user_id, item_id, sales_value`` (summed)."""
    return (
        split.test_window(tx, windows)
        .group_by(C.USER, C.ITEM)
        .agg(pl.col(C.SALES).sum().cast(pl.Float64))
    )


@dataclass(frozen=True)
class HeldOut:
    """What a list is scored against: the test window's truth and spend, and the past."""

    truth: pl.DataFrame
    """:func:`test_truth`: distinct catalogue items each user bought in the test window."""
    spend: pl.DataFrame
    """:func:`spend_in_test_window`: each user's test-window spend per item."""
    bought: pl.DataFrame
    """:func:`bought_before`: every (user, item) bought before the test window."""


def held_out(tx: pl.LazyFrame, windows: split.Windows, placeholder: int) -> HeldOut:
    """:class:`HeldOut` of the catalogue-applied ``tx`` at ``windows`` (collected once)."""
    return HeldOut(
        truth=test_truth(tx, windows, placeholder).collect(),
        spend=spend_in_test_window(tx, windows).collect(),
        bought=bought_before(tx, windows).collect(),
    )


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
        f"revenue@{k} = the user's test-window spend on their top {k}, averaged over users; "
        "a slot is new when the user never bought its item before the test window; "
        "new_share, repeat_hit, new_hit pool the slots of all users",
    ]
    return "\n".join(lines)
