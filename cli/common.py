"""Shared CLI plumbing: options, settings, logging and error -> exit code mapping."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from recsys_batch.config import Settings, load_settings
from recsys_batch.errors import RecsysError

T = TypeVar("T")

console = Console(stderr=False)
err_console = Console(stderr=True)

SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="Data source: completejourney (bundled, default), dunnhumby, files, synthetic.",
    ),
]
PathOpt = Annotated[
    Path | None,
    typer.Option("--path", help="Directory of the source's files (dunnhumby, synthetic)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML config file; RECSYS_* env vars override it."),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]


def build_settings(
    config: Path | None, source: str | None = None, path: Path | None = None
) -> Settings:
    """Settings from file + env, with the CLI's --source/--path on top."""
    base = load_settings(config)
    data_over: dict[str, Any] = {}
    if source is not None:
        data_over["source"] = source
    if path is not None:
        data_over["path"] = path
    if not data_over:
        return base
    merged = base.model_dump()
    merged["data"] = {**merged["data"], **data_over}
    return load_settings(config, **{"data": merged["data"]})


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            payload.update(extra)
        return json.dumps(payload, default=str)


def setup_logging(log_format: str = "human", level: int = logging.INFO) -> None:
    """Human-readable logs on stderr by default, JSON lines with ``--log-format json``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def run_guarded(func: Callable[[], T], *, debug: bool = False) -> T:
    """Call ``func``; turn a ``RecsysError`` into one clear line and its exit code.

    Anything unexpected exits 1; ``--debug`` adds the traceback in both cases.
    """
    try:
        return func()
    except RecsysError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(
            f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=exc.exit_code) from None
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence of the CLI
        if debug:
            traceback.print_exc()
        err_console.print(
            f"[bold red]unexpected error:[/] {type(exc).__name__}: {exc} (rerun with --debug)",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1) from None
