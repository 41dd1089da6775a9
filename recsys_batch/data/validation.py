"""Load-time checks of a :class:`~recsys_batch.data.sources.Dataset`, with errors one can act on.

Every check reads as little as it can: column names come from file headers, and the value
checks of each table are one aggregate row, all collected together in one streaming
``pl.collect_all`` (one pass over each file; the bundled 1.47M rows take a fraction of a
second). Problems found, in the order they are reported:

1. a required column is missing, or an optional one is misspelled (closest name suggested);
2. a value cannot be cast to the canonical type (first bad value shown);
3. a key (``user_id``, ``basket_id``, ``day``, ``item_id``, ``week``, ``quantity``,
   ``sales_value`` in transactions; ``item_id``/``user_id`` in items/users) is null;
4. a ``user_id`` (transactions, users) is negative (Redis keys are built from ids >= 0);
5. a table has no rows;
6. the weeks do not cover the configured windows (``windows.backtest_windows``);
7. a campaign period ends before it starts.

The optional plan tables (``plans``: promotions, campaigns, ...) get checks 1-4 and 7 and
may be empty (nothing planned); their rows and week or day ranges go into the report.

Each raises :class:`~recsys_batch.errors.DataError` naming the file, the column and the fix
(exit code 2). Two findings are not fatal: returns (negative quantity or sales value) are
dropped and counted, and items bought but absent from the item table are counted in a
WARNING (they have no department, so the department rule cannot judge them).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.frames import distinct_count
from recsys_batch.data.plans import PLAN_AXIS, plan_checks, raise_on_plan
from recsys_batch.data.sources import Dataset
from recsys_batch.data.tables import (
    ITEMS,
    PLAN_TABLES,
    SCHEMAS,
    TRANSACTIONS,
    USERS,
    SourceTable,
    canonical,
    cast_expr,
)
from recsys_batch.data.windows import Windows, backtest_windows
from recsys_batch.errors import DataError, SchemaMismatchError

log = logging.getLogger(__name__)

# Transactions rows that are kept: returns are dropped. Quantity 0 (weighed goods) is kept;
# the bundled funnel counts depend on it.
KEEP_ROW = (pl.col(C.QTY) >= 0) & (pl.col(C.SALES) >= 0)


@dataclass(frozen=True)
class ValidationReport:
    """What validation found; ``recsys data validate`` prints it."""

    source: str
    rows: int
    """Transaction rows read (before dropping returns)."""
    dropped_returns: int
    """Rows with a negative quantity or sales value, dropped."""
    users: int
    items: int
    """Distinct items bought."""
    first_week: int
    last_week: int
    first_day: int
    last_day: int
    windows: Windows
    """Backtest windows the data supports."""
    item_rows: int | None
    """Rows of the item table (None: no item table)."""
    missing_items: int | None
    """Distinct items bought but absent from the item table (None: no item table)."""
    user_rows: int | None
    """Rows of the users (demographics) table (None: no users table)."""
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Plan table present -> ``rows`` and, where it has one, ``weeks`` or ``days`` [first,
    last] (promotions: weeks; campaign periods: first start and last end day; redemptions)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        out = dict(self.__dict__)
        out["windows"] = dict(self.windows.__dict__)
        return out


def source_tables(dataset: Dataset) -> tuple[SourceTable, ...]:
    """The dataset's files as read; canonical frames stand in when a reader gave none."""
    if dataset.tables:
        return dataset.tables
    identity = {name: name for schema in SCHEMAS.values() for name in schema.names()}
    frames: tuple[tuple[str, pl.LazyFrame | None], ...] = (
        (TRANSACTIONS, dataset.transactions),
        (ITEMS, dataset.items),
        (USERS, dataset.users),
        *dataset.plans.frames().items(),
    )
    return tuple(
        SourceTable(table, f"{dataset.name} {table}", frame, identity)
        for table, frame in frames
        if frame is not None
    )


def check_columns(table: SourceTable) -> None:
    """Required columns present; no optional column apparently misspelled.

    Raises
    ------
    SchemaMismatchError
        Naming the file, the expected column, and the closest column the file has.
    """
    names = table.raw.collect_schema().names()
    used = {table.source_column(c) for c in table.schema.names()} & set(names)
    unused = [n for n in names if n not in used]
    for canonical_name in table.schema.names():
        wanted = table.source_column(canonical_name)
        if wanted in names:
            continue
        close = difflib.get_close_matches(wanted, unused, n=1, cutoff=0.6)
        lowered = {n.lower(): n for n in unused}
        if wanted.lower() in lowered:
            close = [lowered[wanted.lower()]]
        if canonical_name in table.required:
            hint = f"rename column {close[0]!r} to {wanted!r}" if close else f"add {wanted!r}"
            msg = f"{table.table}: required column {wanted!r} is missing"
            if close:
                msg += f" (did you mean {close[0]!r}?)"
            raise SchemaMismatchError(
                msg, file=table.file, column=wanted, fix=_with_hint(hint, table)
            )
        # An optional column would silently become null: flag a near miss as a typo.
        near = difflib.get_close_matches(wanted, unused, n=1, cutoff=0.85)
        if near:
            msg = f"{table.table}: column {near[0]!r} looks like a misspelling of {wanted!r}"
            raise SchemaMismatchError(
                msg,
                file=table.file,
                column=near[0],
                fix=_with_hint(f"rename column {near[0]!r} to {wanted!r}", table),
            )


def _with_hint(fix: str, table: SourceTable) -> str:
    return f"{fix}, or {table.fix_hint}" if table.fix_hint else fix


def _present(table: SourceTable) -> dict[str, tuple[str, pl.DataType]]:
    """Canonical name -> (file column, file dtype) for the columns the file has."""
    schema = table.raw.collect_schema()
    out = {}
    for name in table.schema.names():
        source = table.source_column(name)
        if source in schema:
            out[name] = (source, schema[source])
    return out


def _keys(table: SourceTable) -> tuple[str, ...]:
    return table.required


def table_checks(table: SourceTable) -> pl.LazyFrame:
    """One aggregate row: rows, bad casts and nulls per column (``bad:``/``null:``/``eg:``)."""
    exprs: list[pl.Expr] = [pl.len().alias("rows")]
    for name, (source, raw_dtype) in _present(table).items():
        dtype = table.schema[name]
        if raw_dtype != dtype:
            lenient = cast_expr(source, raw_dtype, dtype, strict=False)
            failed = pl.col(source).is_not_null() & lenient.is_null()
            exprs.append(failed.sum().alias(f"bad:{name}"))
            exprs.append(pl.col(source).filter(failed).first().cast(pl.String).alias(f"eg:{name}"))
        if name in _keys(table):
            exprs.append(pl.col(source).is_null().sum().alias(f"null:{name}"))
        if name == C.USER:
            value = (
                pl.col(source)
                if raw_dtype == dtype
                else cast_expr(source, raw_dtype, dtype, strict=False)
            )
            exprs.append((value < 0).sum().alias(f"neg:{name}"))
    return table.raw.select(exprs)


def transaction_stats(transactions: pl.LazyFrame) -> pl.LazyFrame:
    """One row: week/day range, users, items and returns of the (lenient) transactions."""
    ranges = transactions.select(
        pl.col(C.WEEK).min().alias("first_week"),
        pl.col(C.WEEK).max().alias("last_week"),
        pl.col(C.DAY).min().alias("first_day"),
        pl.col(C.DAY).max().alias("last_day"),
        (~KEEP_ROW).sum().alias("returns"),
    )
    return ranges.join(distinct_count(transactions, C.USER, "users"), how="cross").join(
        distinct_count(transactions, C.ITEM, "items"), how="cross"
    )


def missing_items(transactions: pl.LazyFrame, items: pl.LazyFrame) -> pl.LazyFrame:
    """One row: distinct items bought but absent from the item table."""
    bought = transactions.select(C.ITEM).unique()
    known = items.select(C.ITEM).unique()
    return bought.join(known, on=C.ITEM, how="anti").select(pl.len().alias("missing"))


def _raise_on_values(table: SourceTable, row: dict[str, Any]) -> None:
    """Turn one ``table_checks`` row into the first error it shows."""
    present = _present(table)
    for name, (source, raw_dtype) in present.items():
        bad = row.get(f"bad:{name}") or 0
        if bad:
            dtype = table.schema[name]
            msg = (
                f"{table.table}: {bad} value(s) of column {source!r} cannot be read as "
                f"{dtype} (first: {row.get(f'eg:{name}')!r}; the file has {raw_dtype})"
            )
            raise SchemaMismatchError(
                msg,
                file=table.file,
                column=source,
                fix=f"correct or remove those rows so {source!r} holds only {dtype} values",
            )
    for name in _keys(table):
        nulls = row.get(f"null:{name}") or 0
        if nulls:
            source = table.source_column(name)
            msg = f"{table.table}: {nulls} row(s) have no {source!r} (a key that must be set)"
            raise DataError(
                msg,
                file=table.file,
                column=source,
                fix="fill in or remove the rows with an empty value in that column",
            )
    negative = row.get(f"neg:{C.USER}") or 0
    if negative:
        source = table.source_column(C.USER)
        msg = f"{table.table}: {negative} row(s) have a negative {source!r}"
        raise DataError(
            msg,
            file=table.file,
            column=source,
            fix="user ids must be non-negative integers",
        )
    if not row["rows"] and table.table not in PLAN_TABLES:  # an empty plan: nothing planned
        msg = f"{table.table}: the file has no rows"
        raise DataError(
            msg,
            file=table.file,
            column=", ".join(table.source_column(c) for c in table.required),
            fix="provide a file with data under its header",
        )


def check(dataset: Dataset, settings: Settings) -> ValidationReport:
    """Run every check; return what was found.

    Raises
    ------
    DataError
        The first problem found (see the module docstring), naming file, column and fix.
    """
    tables = source_tables(dataset)
    for table in tables:
        check_columns(table)
    by_name = {t.table: t for t in tables}
    tx_table = by_name[TRANSACTIONS]
    lenient_tx = canonical(tx_table, strict=False)

    plans = [table_checks(t) for t in tables]
    plans.append(transaction_stats(lenient_tx))
    item_table = by_name.get(ITEMS)
    if item_table is not None:
        plans.append(missing_items(lenient_tx, canonical(item_table, strict=False)))
    plan_tables = [t for t in tables if t.table in PLAN_TABLES]
    plans.extend(plan_checks(t) for t in plan_tables)
    # Streaming, and each plan scans its files itself: the in-memory engine, or one cached
    # scan shared by the plans, buffered every checked column (5.5 GB at 100x).
    no_cache = pl.QueryOptFlags(comm_subplan_elim=False)
    collected = pl.collect_all(plans, engine="streaming", optimizations=no_cache)
    results = [frame.row(0, named=True) for frame in collected]

    for table, row in zip(tables, results, strict=False):
        _raise_on_values(table, row)
    plan_rows = results[len(results) - len(plan_tables) :]
    table_rows = {t.table: row["rows"] for t, row in zip(tables, results, strict=False)}
    stats = results[len(tables)]
    missing = results[len(tables) + 1]["missing"] if item_table is not None else None

    try:
        windows = backtest_windows(
            int(stats["first_week"]), int(stats["last_week"]), settings.split
        )
    except DataError as exc:
        raise DataError(
            str(exc.args[0]).split(" | ")[0],
            file=tx_table.file,
            column=tx_table.source_column(C.WEEK),
            fix=exc.fix,
        ) from exc

    for table, row in zip(plan_tables, plan_rows, strict=True):
        raise_on_plan(table, row)

    report = ValidationReport(
        source=dataset.name,
        rows=int(table_rows[TRANSACTIONS]),
        dropped_returns=int(stats["returns"]),
        users=int(stats["users"]),
        items=int(stats["items"]),
        first_week=int(stats["first_week"]),
        last_week=int(stats["last_week"]),
        first_day=int(stats["first_day"]),
        last_day=int(stats["last_day"]),
        windows=windows,
        item_rows=table_rows.get(ITEMS),
        missing_items=None if missing is None else int(missing),
        user_rows=table_rows.get(USERS),
        plans={
            t.table: _plan_summary(t.table, table_rows[t.table], row)
            for t, row in zip(plan_tables, plan_rows, strict=True)
        },
    )
    _log_findings(report, tx_table, item_table)
    return report


def _plan_summary(table: str, rows: int, row: dict[str, Any]) -> dict[str, Any]:
    """``rows`` and, for a table with a time axis and rows, its ``weeks``/``days`` range."""
    summary: dict[str, Any] = {"rows": int(rows)}
    if table in PLAN_AXIS and row["first"] is not None:
        summary[PLAN_AXIS[table]] = [int(row["first"]), int(row["last"])]
    return summary


def _log_findings(
    report: ValidationReport, tx_table: SourceTable, item_table: SourceTable | None
) -> None:
    if report.dropped_returns:
        log.info(
            "dropped %d return row(s) (negative %s or %s) of %d in %s",
            report.dropped_returns,
            tx_table.source_column(C.QTY),
            tx_table.source_column(C.SALES),
            report.rows,
            tx_table.file,
        )
    if report.missing_items and item_table is not None:
        log.warning(
            "%d item(s) bought in %s are absent from the item table %s (column %s); "
            "they have no department, so the department rule keeps them",
            report.missing_items,
            tx_table.file,
            item_table.file,
            item_table.source_column(C.ITEM),
        )


def apply_report(dataset: Dataset, report: ValidationReport) -> Dataset:
    """The dataset without its returns (lazy filter only when there are some)."""
    if not report.dropped_returns:
        return dataset
    return replace(dataset, transactions=dataset.transactions.filter(KEEP_ROW))


def validate(dataset: Dataset, settings: Settings) -> tuple[Dataset, ValidationReport]:
    """Check the dataset; return it without returns, and the report."""
    report = check(dataset, settings)
    return apply_report(dataset, report), report


def validated(dataset: Dataset, settings: Settings) -> Dataset:
    """Check the dataset and drop returns (see the module docstring).

    Raises
    ------
    DataError
        Exit code 2; the message names the file, the column and the fix.
    """
    return validate(dataset, settings)[0]
