"""One input table: scanned from its file, its columns mapped and cast to the canonical schema.

:mod:`recsys_batch.data.sources` builds a :class:`SourceTable` per file of a source;
:mod:`recsys_batch.data.validation` checks them, naming the file and the column as the user
wrote them, before :func:`canonical` renames and casts.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys_batch.data import columns as C
from recsys_batch.errors import DataError

TRANSACTIONS = "transactions"
ITEMS = "items"
USERS = "users"
# Optional plan tables (issue #26): absent means "no plan data", never an error.
PROMOTIONS = "promotions"
CAMPAIGNS = "campaigns"
CAMPAIGN_PERIODS = "campaign_periods"
COUPONS = "coupons"
COUPON_REDEMPTIONS = "coupon_redemptions"
PLAN_TABLES = (PROMOTIONS, CAMPAIGNS, CAMPAIGN_PERIODS, COUPONS, COUPON_REDEMPTIONS)

# Columns a table cannot do without; every other canonical column may be absent (then null).
REQUIRED: dict[str, tuple[str, ...]] = {
    TRANSACTIONS: (*C.TRANSACTION_KEYS, C.QTY, C.SALES),
    ITEMS: (C.ITEM,),
    USERS: (C.USER,),
    PROMOTIONS: (C.ITEM, C.STORE, C.WEEK),
    CAMPAIGNS: (C.CAMPAIGN, C.USER),
    CAMPAIGN_PERIODS: (C.CAMPAIGN, C.START_DAY, C.END_DAY),
    COUPONS: (C.CAMPAIGN, C.ITEM),
    COUPON_REDEMPTIONS: (C.USER, C.DAY),
}
# Schemas as read from a file (promotions: the codes; the flags are derived in ``plans``).
SCHEMAS: dict[str, pl.Schema] = {
    TRANSACTIONS: C.TRANSACTIONS,
    ITEMS: C.ITEMS,
    USERS: C.USERS,
    PROMOTIONS: C.PROMOTION_CODES,
    CAMPAIGNS: C.CAMPAIGNS,
    CAMPAIGN_PERIODS: C.CAMPAIGN_PERIODS,
    COUPONS: C.COUPONS,
    COUPON_REDEMPTIONS: C.COUPON_REDEMPTIONS,
}


@dataclass(frozen=True)
class SourceTable:
    """One input file as scanned, before its columns are renamed and cast.

    ``validation`` checks these (columns present, values castable, keys not null) so that
    an error can name the file and the column as the user wrote them.
    """

    table: str
    """``transactions``, ``items``, ``users`` or a plan table (``PLAN_TABLES``)."""
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


def read_table(
    table: str,
    path: Path,
    columns: Mapping[str, str],
    fix_hint: str,
    *,
    required_columns: str | None = None,
    fix: str | None = None,
) -> SourceTable:
    """The file at ``path`` scanned (:func:`scan_file`) as ``table``, with its column mapping.

    ``required_columns`` (default: the table's required columns) and ``fix`` go to the error
    of a missing file.
    """
    required = ", ".join(REQUIRED[table]) if required_columns is None else required_columns
    raw = scan_file(path, table=table, required_columns=required, fix=fix)
    return SourceTable(table, str(path), raw, columns, fix_hint)


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


def check_column_mapping(mapping: Mapping[str, str]) -> None:
    """Every key of ``data.column_mapping`` must be a canonical column name.

    A key may be scoped to one table (``items.item_id``) when the files name the same
    canonical column differently.

    Raises
    ------
    DataError
        A key is not a canonical name (the closest one is suggested).
    """
    known = sorted({name for schema in SCHEMAS.values() for name in schema.names()})
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
                f"prefixed by a table name ({', '.join(f'{t}.' for t in SCHEMAS)})",
            )


def mapped_columns(table: str, mapping: Mapping[str, str]) -> dict[str, str]:
    """Canonical -> file column of one table: ``table.name`` first, then ``name``."""
    return {
        name: mapping.get(f"{table}.{name}", mapping.get(name, name))
        for name in SCHEMAS[table].names()
    }
