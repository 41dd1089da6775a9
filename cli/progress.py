"""The live progress display of long commands on a terminal (issue #19).

``recsys nightly-batch`` and ``recsys evaluate`` pass a :class:`LiveProgress` to the engine
when stderr is a terminal and the logs are for people (:func:`wanted`): two bars on stderr,
the stages done of the total and the shards scored of the total with an ETA, and one line per
finished stage (the gate's result among them). Log lines still print, above the bars.
Anywhere else (cron, CI, a pipe, ``--log-format json``) nothing changes: the engine gets no
reporter and the command prints the plain log lines it always did.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cli.common import err_console


def wanted(log_format: str = "human", console: Console | None = None) -> bool:
    """A live display only for people: human logs and stderr a terminal."""
    return log_format == "human" and (console or err_console).is_terminal


class LiveProgress:
    """:class:`recsys_batch.run.progress.Progress` drawn with ``rich.progress`` on stderr."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            redirect_stdout=False,  # stdout may be a pipe (--json); only stderr is the screen
            redirect_stderr=True,
            transient=False,
        )
        self.title = title
        self.stages: TaskID | None = None
        self.shards: TaskID | None = None

    def stage_started(self, name: str, index: int, total: int) -> None:
        """Show ``name`` as the running stage."""
        if self.stages is None:
            self.stages = self.bars.add_task(self.title, total=total, detail=name)
        self.bars.update(self.stages, total=total, completed=index - 1, detail=name)

    def stage_finished(self, name: str, rows: int, seconds: float, note: str = "") -> None:
        """Count the stage done and print its line (``note``: the gate's result)."""
        if self.stages is not None:
            self.bars.advance(self.stages)
        counted = f"{rows:>9,} rows" if rows else " " * 14
        extra = f"  [bold]{note}[/]" if note else ""
        self.console.print(
            f"[green]done[/] {name:<17} {counted} {seconds:8.1f}s{extra}", highlight=False
        )

    def shards_started(self, total: int) -> None:
        """Start (or restart) the shard bar at 0 of ``total``."""
        if self.shards is None:
            self.shards = self.bars.add_task("shards", total=total, detail="")
        else:
            self.bars.reset(self.shards, total=total, detail="")

    def shard_done(self, shard: int, users: int) -> None:
        """One more shard scored."""
        if self.shards is not None:
            self.bars.advance(self.shards)
            self.bars.update(self.shards, detail=f"shard {shard} ({users:,} users)")


@contextlib.contextmanager
def live_progress(
    title: str, log_format: str = "human", console: Console | None = None
) -> Iterator[LiveProgress | None]:
    """A :class:`LiveProgress` drawn while the block runs, or None when not :func:`wanted`.

    While it is drawn, the root logger's stream handlers write through the display (to the
    same stderr, above the bars) so log lines and bars never overwrite each other.
    """
    console = console or err_console
    if not wanted(log_format, console):
        yield None
        return
    display = LiveProgress(console, title)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.stream for h in handlers]
    with display.bars:
        for handler in handlers:
            _use_stream(handler, sys.stderr)  # the display's proxy while it is live
        try:
            yield display
        finally:
            for handler, stream in zip(handlers, streams, strict=True):
                _use_stream(handler, stream)


def _use_stream(handler: logging.StreamHandler[Any], stream: Any) -> None:
    """Point ``handler`` at ``stream`` without flushing the old one (``setStream`` does, and
    a stream left behind by an earlier caller may be closed already)."""
    handler.acquire()
    try:
        handler.stream = stream
    finally:
        handler.release()


@contextlib.contextmanager
def step(
    title: str, name: str, index: int, total: int, console: Console | None = None
) -> Iterator[None]:
    """One named step of a command without a stage list (``recsys evaluate``).

    On a terminal, a bar (step ``index`` of ``total``, time elapsed) is drawn while the block
    runs and a ``done`` line with its seconds stays; elsewhere nothing is printed.
    """
    with live_progress(title, console=console) as display:
        if display is None:
            yield
            return
        display.stage_started(name, index, total)
        started = time.perf_counter()
        yield
        display.stage_finished(name, 0, time.perf_counter() - started)
