"""``recsys data ...``: validate a source, print the prefilter funnel, write synthetic data.

Every command builds the settings (``--config``, ``RECSYS_*``, then ``--source``/``--path``),
reads the source lazily, validates it, and exits 2 with one line naming the file, the column
and the fix when the data is wrong (``--debug`` adds the traceback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.table import Table

from cli import common
from recsys_batch.config import PrefilterConfig, Settings

app = typer.Typer(no_args_is_help=True)

JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Also write the result as JSON to this file.")
]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="backtest: weeks before the test window (as `recsys evaluate`); production: all.",
    ),
]


@contextlib.contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner on a terminal; nothing when the output is piped or captured."""
    if common.console.is_terminal:
        with common.console.status(message):
            yield
    else:
        yield


def _load(settings: Settings) -> tuple[Any, Any]:
    """Load and validate the configured source: (dataset without returns, report)."""
    from recsys_batch.data.sources import load_dataset  # noqa: PLC0415 - keep `recsys --help` fast
    from recsys_batch.data.validation import validate  # noqa: PLC0415

    with progress(f"reading and validating {settings.data.source} data"):
        return validate(load_dataset(settings.data), settings)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


@app.command("validate")
def validate_cmd(
    source: common.SourceOpt = None,
    path: common.PathOpt = None,
    config: common.ConfigOpt = None,
    json_path: JsonOpt = None,
    debug: common.DebugOpt = False,
) -> None:
    """Check the data source: files, columns, types, keys, weeks, plans; print a summary."""
    common.setup_logging()

    def run() -> None:
        settings = common.build_settings(config, source, path)
        _, report = _load(settings)
        common.console.print(f"source: {report.source}", highlight=False, soft_wrap=True)
        table = Table(title="data summary", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        rows = [
            ("transaction rows", f"{report.rows:,}"),
            ("returns dropped", f"{report.dropped_returns:,}"),
            ("users", f"{report.users:,}"),
            ("items bought", f"{report.items:,}"),
            ("weeks", f"{report.first_week}..{report.last_week}"),
            ("days", f"{report.first_day}..{report.last_day}"),
            ("item table rows", _count(report.item_rows)),
            ("items missing from item table", _count(report.missing_items)),
            ("users with demographics", _count(report.user_rows)),
            *_plan_rows(report.plans),
            (
                "backtest windows",
                f"history < {report.windows.history_end} <= stage 2 < "
                f"{report.windows.target_end} <= test < {report.windows.test_end}",
            ),
        ]
        for what, value in rows:
            table.add_row(what, value)
        common.console.print(table)
        common.console.print("[green]ok[/]: the data is valid", highlight=False)
        if json_path is not None:
            _write_json(json_path, report.as_dict())

    common.run_guarded(run, debug=debug)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _plan_rows(plans: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """One summary row per plan table: its rows and week or day range, or "-" when absent."""
    from recsys_batch.data.tables import PLAN_TABLES  # noqa: PLC0415 - keep `recsys --help` fast

    rows = []
    for table in PLAN_TABLES:
        summary = plans.get(table)
        value = "-" if summary is None else f"{summary['rows']:,}"
        for axis in ("weeks", "days"):
            if summary is not None and axis in summary:
                first, last = summary[axis]
                value += f" ({axis} {first}..{last})"
        rows.append((f"{table.replace('_', ' ')} rows", value))
    return rows


def rule_descriptions(cfg: PrefilterConfig) -> dict[str, str]:
    """One line per prefilter rule, with its configured thresholds."""
    statistic = "median price" if cfg.price_statistic == "median" else "every price"
    return {
        "all": "bought in the window",
        "recent": f"sold in last {cfg.recent_days} d",
        "popularity": f"{cfg.min_user_share:.0%}..{cfg.max_user_share:.0%} of users",
        "department": f"dept >= {cfg.min_department_items} products",
        "price": f"{statistic} in [{cfg.min_price:g}, {cfg.max_price:g}]",
        "top_n": f"top {cfg.top_n:,} by quantity",
    }


def funnel_table(funnel: pl.DataFrame, cfg: PrefilterConfig, title: str) -> Table:
    """The funnel as a rich table: rule, what it keeps, items/users/rows left."""
    descriptions = rule_descriptions(cfg)
    table = Table(title=title)
    table.add_column("rule", no_wrap=True)
    table.add_column("keeps")
    for name in ("items", "users", "rows", "dropped"):
        table.add_column(name, justify="right", no_wrap=True)
    previous = None
    for row in funnel.iter_rows(named=True):
        dropped = "" if previous is None else f"{previous - row['items']:,}"
        table.add_row(
            row["rule"],
            descriptions.get(row["rule"], ""),
            f"{row['items']:,}",
            f"{row['users']:,}",
            f"{row['rows']:,}",
            dropped,
        )
        previous = row["items"]
    return table


@app.command("prefilter")
def prefilter_cmd(
    source: common.SourceOpt = None,
    path: common.PathOpt = None,
    config: common.ConfigOpt = None,
    mode: ModeOpt = "backtest",
    json_path: JsonOpt = None,
    debug: common.DebugOpt = False,
) -> None:
    """Print the prefilter funnel: items, users and rows left after each rule."""
    common.setup_logging()

    def run() -> None:
        from recsys_batch.errors import ConfigError  # noqa: PLC0415
        from recsys_batch.model import split  # noqa: PLC0415
        from recsys_batch.model.prefilter import prefilter  # noqa: PLC0415

        if mode not in ("backtest", "production"):
            msg = f"--mode must be backtest or production, got {mode!r}"
            raise ConfigError(msg)
        started = time.perf_counter()
        settings = common.build_settings(config, source, path)
        dataset, report = _load(settings)
        tx = dataset.transactions
        if mode == "backtest":
            # The catalogue of a backtest never sees the test window (issue #4 protocol).
            tx = split.before_test(tx, report.windows)
            last_week = report.windows.target_end - 1
        else:
            last_week = report.last_week
        with progress("computing the prefilter funnel"):
            result = prefilter(tx, dataset.items, settings.prefilter)
            funnel = result.funnel.collect()
        seconds = time.perf_counter() - started
        title = f"prefilter funnel, weeks {report.first_week}..{last_week} ({mode})"
        common.console.print(f"source: {report.source}", highlight=False, soft_wrap=True)
        common.console.print(funnel_table(funnel, settings.prefilter, title))
        kept = _items_after(funnel, "top_n")
        passed = _items_after(funnel, "price")
        if passed < settings.prefilter.top_n:
            common.console.print(
                f"note: only {passed:,} items pass the rules, fewer than top_n="
                f"{settings.prefilter.top_n:,}; all of them are kept",
                highlight=False,
            )
        if dataset.items is None:
            common.console.print("note: no item table, so the department rule was skipped")
        common.console.print(f"catalogue: {kept:,} items ({seconds:.2f} s)", highlight=False)
        if json_path is not None:
            _write_json(
                json_path,
                {
                    "source": report.source,
                    "mode": mode,
                    "weeks": [report.first_week, last_week],
                    "funnel": funnel.to_dicts(),
                    "catalogue_items": kept,
                    "config": settings.prefilter.model_dump(),
                    "seconds": round(seconds, 3),
                },
            )

    common.run_guarded(run, debug=debug)


def _items_after(funnel: pl.DataFrame, rule: str) -> int:
    return int(funnel.filter(pl.col("rule") == rule).get_column("items").item())


@app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output folder (created if needed).")],
    users: Annotated[
        int, typer.Option("--users", min=1, help="Number of users; the bundled data has 2,500.")
    ] = 2_500,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same data.")] = 42,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace synthetic data already in --out.")
    ] = False,
    debug: common.DebugOpt = False,
) -> None:
    """Write seeded synthetic data (parquet) readable with --source synthetic --path OUT."""
    common.setup_logging(level=logging.WARNING)

    def run() -> None:
        from recsys_batch.data.synthetic import write_synthetic  # noqa: PLC0415

        with progress(f"generating {users:,} synthetic users"):
            manifest = write_synthetic(out, users, seed, overwrite=overwrite)
        common.console.print(
            f"wrote {manifest['rows']:,} transactions of {users:,} users, "
            f"{manifest['items']:,} items, in {manifest['parts']} part(s), and "
            f"{manifest['plans']['promotions']:,} promotion rows with the campaigns to {out} "
            f"({manifest['seconds']:.1f} s); read it with "
            f"`recsys data prefilter --source synthetic --path {out}`",
            highlight=False,
        )

    common.run_guarded(run, debug=debug)
