"""Progress events of a run and their terminal display (issue #19)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from rich.console import Console

from cli import progress as cli_progress
from recsys_batch.run import pipeline, progress, records
from recsys_batch.run.executors import LocalExecutor
from recsys_batch.run.shard_task import ShardResult
from recsys_batch.run.stages import RunState


class Recorder:
    """A :class:`progress.Progress` that remembers every event."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def stage_started(self, name: str, index: int, total: int) -> None:
        self.events.append(("start", name, index, total))

    def stage_finished(self, name: str, rows: int, seconds: float, note: str = "") -> None:
        self.events.append(("done", name, rows, note))

    def shards_started(self, total: int) -> None:
        self.events.append(("shards", total))

    def shard_done(self, shard: int, users: int) -> None:
        self.events.append(("shard", shard, users))


def _state(tmp_path: Path) -> RunState:
    from recsys_batch.config import Settings  # noqa: PLC0415

    record = records.RunRecord("r1", tmp_path / "r1", "2026-11-28T03:15:00+00:00")
    return RunState(Settings(), record)


def _gate(state: RunState) -> int:
    state.record.metrics = {"gate": {"metric": "precision@5", "value": 0.21345}}
    return 1


class TestRunnerEvents:
    def test_each_stage_started_and_finished_in_order_with_the_gate_result(
        self, tmp_path: Path
    ) -> None:
        recorder = Recorder()
        stages = [("load", lambda s: 7), ("gate", _gate), ("save", lambda s: 1)]
        pipeline.run_stages(_state(tmp_path), stages, recorder)
        assert recorder.events == [
            ("start", "load", 1, 3),
            ("done", "load", 7, ""),
            ("start", "gate", 2, 3),
            ("done", "gate", 1, "passed: precision@5 0.2135"),
            ("start", "save", 3, 3),
            ("done", "save", 1, ""),
        ]

    def test_no_reporter_is_silent(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        """Without a reporter nothing reaches the terminal (cron, CI, ``--log-format json``
        read the log lines only), yet the stage still runs and is recorded. Catches a
        default that draws the live display or prints stage lines."""
        state = _state(tmp_path)
        pipeline.run_stages(state, [("load", lambda s: 7)])
        assert capfd.readouterr() == ("", "")
        assert [(s.name, s.rows) for s in state.record.stages] == [("load", 7)]


def _shard(ctx: Any, shard: int, users: pl.DataFrame) -> ShardResult:
    return ShardResult(shard=shard, users=users.height, rows=users.height)


class TestShardEvents:
    def test_map_shards_reports_to_the_current_reporter(self) -> None:
        recorder = Recorder()
        shards = [(0, pl.DataFrame({"u": [1, 2]})), (3, pl.DataFrame({"u": [3]}))]
        with progress.reporting(recorder):
            LocalExecutor(retries=0).map_shards(_shard, None, shards)  # type: ignore[arg-type]
        assert recorder.events == [("shards", 2), ("shard", 0, 2), ("shard", 3, 1)]

    def test_outside_a_run_nothing_is_reported(self) -> None:
        assert progress.current() is progress.NO_PROGRESS
        with progress.reporting(None) as active:
            assert active is progress.NO_PROGRESS


class TestLiveDisplay:
    def test_bars_and_stage_lines_on_a_terminal(self) -> None:
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=120)
        with cli_progress.live_progress("stages", console=console) as display:
            assert display is not None
            display.stage_started("gate", 2, 6)
            display.stage_finished("gate", 1, 2.5, "passed: precision@5 0.2100")
            display.shards_started(3)
            display.shard_done(0, 100)
            logging.getLogger("recsys_batch.test").warning("a log line")
        text = out.getvalue()
        assert "passed: precision@5 0.2100" in text
        assert "1/6" in text or "2/6" in text
        assert "shards" in text and "1/3" in text

    def test_not_a_terminal_or_json_logs_no_display(self) -> None:
        plain = Console(file=io.StringIO(), force_terminal=False)
        with cli_progress.live_progress("stages", console=plain) as display:
            assert display is None
        tty = Console(file=io.StringIO(), force_terminal=True)
        with cli_progress.live_progress("stages", "json", console=tty) as display:
            assert display is None


def test_a_closed_stream_left_on_a_log_handler_does_not_break_the_display() -> None:
    """Regression: a root handler still holding an earlier run's closed stream (CliRunner
    closes its capture) made ``setStream`` raise when the display took the handlers over."""
    closed = io.StringIO()
    handler = logging.StreamHandler(closed)
    logging.getLogger().addHandler(handler)
    closed.close()
    try:
        console = Console(file=io.StringIO(), force_terminal=True, width=80)
        with cli_progress.live_progress("stages", console=console) as display:
            assert display is not None
        assert handler.stream is closed  # given back as it was
    finally:
        logging.getLogger().removeHandler(handler)
