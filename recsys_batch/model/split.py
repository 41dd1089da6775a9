"""Time split by ``week``: the frames of each window of :mod:`recsys_batch.data.windows`.

The windows themselves (``Windows``, ``backtest_windows``, ``production_windows``) are week
arithmetic that load-time validation needs too, so they live in the data layer; they are
imported here under their old names for the model and evaluation code.
"""

from __future__ import annotations

import polars as pl

from recsys_batch.data import columns as C
from recsys_batch.data.windows import Windows as Windows
from recsys_batch.data.windows import backtest_windows as backtest_windows
from recsys_batch.data.windows import production_windows as production_windows
from recsys_batch.errors import DataError


def history(transactions: pl.LazyFrame, windows: Windows) -> pl.LazyFrame:
    """Stage-1 history: purchases before the stage-2 window."""
    return transactions.filter(pl.col(C.WEEK) < windows.history_end)


def stage2_window(transactions: pl.LazyFrame, windows: Windows) -> pl.LazyFrame:
    """The stage-2 (target) window."""
    return transactions.filter(
        pl.col(C.WEEK).is_between(windows.history_end, windows.target_end, closed="left")
    )


def before_test(transactions: pl.LazyFrame, windows: Windows) -> pl.LazyFrame:
    """History plus the stage-2 window: all a backtest may learn from."""
    return transactions.filter(pl.col(C.WEEK) < windows.target_end)


def test_window(transactions: pl.LazyFrame, windows: Windows) -> pl.LazyFrame:
    """The backtest holdout; empty in production."""
    if windows.test_end is None:
        return transactions.filter(pl.lit(False))
    return transactions.filter(
        pl.col(C.WEEK).is_between(windows.target_end, windows.test_end, closed="left")
    )


def week_range(transactions: pl.LazyFrame) -> tuple[int, int]:
    """First and last week present (one small collect)."""
    bounds = transactions.select(
        pl.col(C.WEEK).min().alias("lo"), pl.col(C.WEEK).max().alias("hi")
    ).collect()
    lo, hi = bounds.row(0)
    if lo is None:
        raise DataError(
            "no transactions to split", column=C.WEEK, fix="check the input data is not empty"
        )
    return int(lo), int(hi)
