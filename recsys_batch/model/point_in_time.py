"""The point-in-time cut every stage-2 feature reads through.

A feature as of week ``as_of_week`` sees only purchases with ``week < as_of_week``
(:func:`before_cut`); recencies count from the day after the newest of them.
"""

from __future__ import annotations

import polars as pl

from recsys_batch.config import PrefilterConfig
from recsys_batch.data import columns as C

# Purchases of non-catalogue items carry ``settings.prefilter.placeholder_item``: they count
# for user totals but are never an item of their own here. Every function takes the configured
# id as ``placeholder_item``; this default is only for callers without a configuration.
PLACEHOLDER = PrefilterConfig().placeholder_item
# Helper columns that :func:`prepared` adds to every line (aggregated, never a feature).
REF_DAY = "_ref_day"
PRICE = "_unit_price"
DISCOUNTED = "_discounted"
COUPONED = "_couponed"


def before_cut(transactions: pl.LazyFrame, as_of_week: int) -> pl.LazyFrame:
    """Purchases strictly before ``as_of_week``: all a feature may see (point in time)."""
    return transactions.filter(pl.col(C.WEEK) < as_of_week)


def prepared(transactions: pl.LazyFrame, as_of_week: int) -> pl.LazyFrame:
    """Cut transactions with the reference day and per-row helper columns."""
    cut = before_cut(transactions, as_of_week)
    return cut.with_columns(
        (pl.col(C.DAY).max() + 1).alias(REF_DAY),
        (pl.col(C.SALES) / pl.max_horizontal(pl.col(C.QTY), pl.lit(1))).alias(PRICE),
        (pl.col(C.RETAIL_DISC).fill_null(0.0).abs() > 0).alias(DISCOUNTED),
        (
            (
                pl.col(C.COUPON_DISC).fill_null(0.0).abs()
                + pl.col(C.COUPON_MATCH_DISC).fill_null(0.0).abs()
            )
            > 0
        ).alias(COUPONED),
    )
