"""Small lazy-frame helpers shared by ``validation`` and the model stages."""

from __future__ import annotations

import polars as pl

from recsys_batch.data import columns as C


def distinct_count(frame: pl.LazyFrame, column: str, alias: str) -> pl.LazyFrame:
    """One row: the distinct values of ``column``, as ``alias``.

    A ``unique`` then a count, which the streaming engine runs on a hash set; its
    ``n_unique`` over a whole frame buffered the column (5.5 GB for users and items at 100x).
    """
    return frame.select(pl.col(column).unique()).select(pl.len().alias(alias))


def rows_and_users(transactions: pl.LazyFrame) -> tuple[int, int]:
    """Lines and distinct users of ``transactions``, in one streaming pass."""
    rows, users = (
        transactions.select(pl.len())
        .join(distinct_count(transactions, C.USER, "users"), how="cross")
        .collect(engine="streaming")
        .row(0)
    )
    return int(rows), int(users)
