"""Progress events of a long run, reported to whoever watches (issue #19).

The engine does not draw anything: the runner (:func:`recsys_batch.run.pipeline.run_stages`)
and the shard executors (:mod:`recsys_batch.run.executors`) call a :class:`Progress` object.
The default, :data:`NO_PROGRESS`, ignores every event, so cron, CI and ``--log-format json``
see exactly the log lines they saw before; the CLI passes a live terminal display
(``cli/progress.py``) when stderr is a terminal.

A run's executors are built deep inside a stage, so the reporter of the run in progress is
also held in a context variable (:func:`reporting`, :func:`current`): ``map_shards`` reports
to it without every stage having to pass it down.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol


class Progress(Protocol):
    """What a run reports; every method must be cheap and must not raise."""

    def stage_started(self, name: str, index: int, total: int) -> None:
        """Stage ``name`` (``index`` of ``total``, 1-based) begins."""

    def stage_finished(self, name: str, rows: int, seconds: float, note: str = "") -> None:
        """Stage ``name`` ended; ``note`` is a short result (the gate's value, ...)."""

    def shards_started(self, total: int) -> None:
        """``total`` shards are about to be scored."""

    def shard_done(self, shard: int, users: int) -> None:
        """Shard ``shard`` finished with ``users`` users scored."""


class NoProgress:
    """Ignores every event (the default: plain log lines only)."""

    def stage_started(self, name: str, index: int, total: int) -> None:  # noqa: D102
        return None

    def stage_finished(  # noqa: D102
        self, name: str, rows: int, seconds: float, note: str = ""
    ) -> None:
        return None

    def shards_started(self, total: int) -> None:  # noqa: D102
        return None

    def shard_done(self, shard: int, users: int) -> None:  # noqa: D102
        return None


NO_PROGRESS: Progress = NoProgress()

_CURRENT: contextvars.ContextVar[Progress] = contextvars.ContextVar(
    "recsys_progress", default=NO_PROGRESS
)


def current() -> Progress:
    """The reporter of the run in progress (:data:`NO_PROGRESS` outside :func:`reporting`)."""
    return _CURRENT.get()


@contextlib.contextmanager
def reporting(progress: Progress | None) -> Iterator[Progress]:
    """Make ``progress`` (None: :data:`NO_PROGRESS`) the :func:`current` one in this block."""
    active = progress if progress is not None else NO_PROGRESS
    token = _CURRENT.set(active)
    try:
        yield active
    finally:
        _CURRENT.reset(token)
