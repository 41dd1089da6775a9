"""The lazy-frame counting helpers of ``recsys_batch.data.frames``."""

from __future__ import annotations

import polars as pl

from recsys_batch.data.frames import distinct_count, rows_and_users


def test_rows_and_users_counts_lines_and_distinct_users() -> None:
    """Catches: counting distinct lines, or users with repeats, or the two swapped."""
    tx = pl.LazyFrame({"user_id": [7, 7, 7, 9], "item_id": [1, 1, 2, 1]})
    assert rows_and_users(tx) == (4, 2)
    assert distinct_count(tx, "item_id", "n").collect().item() == 2
