"""``recsys nightly-batch``: data -> two-stage model -> top k per user -> Redis.

The night is the ordered list :data:`STAGES` of named functions over one
:class:`~recsys_batch.run.stages.RunState`::

    load               read + validate the source; ``--run-date`` drops what came later
    prefilter          the catalogue; other purchases become the placeholder item
    gate               the backtest (as ``recsys evaluate``) on at most ``scale.train_users``
                       users: ``gate.metric`` must reach the floor and hold against the live
                       version (exit 3 otherwise; skipped by ``--no-gate``); up to
                       ``scale.beside_gate_rows`` transactions the served model's other
                       parts are fitted beside it on a thread
                       (:mod:`~recsys_batch.run.beside_gate`)
    train              the scoring model (the gate's ranker, stage 1 refit on everyone, the
                       new-items ranker on the newest weeks) and the popular fallback list
    save               models and manifest under ``runs/<run_id>``
    score_and_publish  every user's top k in shards of ``scale.shard_users``, each shard
                       written into one new Redis version; verified, then flipped live once
                       (``--dry-run``: scored and saved only)

The runner times every stage, logs one line per stage and records it in
``runs/<run_id>/manifest.json``, and reports it to an optional
:class:`~recsys_batch.run.progress.Progress` (the CLI's live display on a terminal). A stage
producing zero rows raises :class:`~recsys_batch.errors.EmptyStageError` before Redis is
touched, and every failure leaves the live version serving. Whatever the outcome, a short
summary of the run is pushed to ``P:runs`` (:mod:`recsys_batch.publish.run_log`, best effort).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from recsys_batch.config import Settings
from recsys_batch.errors import QualityGateError, RecsysError
from recsys_batch.publish import run_log, store
from recsys_batch.run import progress as progress_events
from recsys_batch.run import quality_gate, records, run_shards, stages
from recsys_batch.run.lock import run_lock
from recsys_batch.run.stages import RunState

log = logging.getLogger(__name__)

Stage = Callable[[RunState], int]
"""A stage: fills its fields of the state, returns the rows it produced."""

STAGES: list[tuple[str, Stage]] = [
    ("load", stages.load),
    ("prefilter", stages.run_prefilter),
    ("gate", stages.run_gate),
    ("train", stages.train),
    ("save", stages.save),
    ("score_and_publish", stages.score_and_publish),
]


@dataclass
class RunResult:
    """What one nightly run did."""

    run_id: str
    run_dir: Path
    status: str
    """``published`` or ``dry-run``."""
    version: str | None
    users: int
    metrics: dict[str, Any] = field(default_factory=dict)
    stages: list[records.StageRecord] = field(default_factory=list)
    peak_memory_mb: float = 0.0


def run_nightly(
    settings: Settings,
    run_date: date | None = None,
    dry_run: bool = False,
    gate: bool = True,
    progress: progress_events.Progress | None = None,
) -> RunResult:
    """Train, score every user and publish atomically; see the module docstring.

    Parameters
    ----------
    settings
        Built once by the CLI.
    run_date
        Treat transactions after this date (``data.origin_date`` = day 1) as unseen.
    dry_run
        Do everything but the publish (Redis is only read, for the gate, when reachable).
    gate
        Apply the quality gate (also needs ``settings.gate.enabled``).
    progress
        Receives stage and shard events (default: none, the log lines only).

    Raises
    ------
    LockError
        Another run holds the lock (exit 5).
    DataError, ConfigError
        Bad input or configuration (exit 2); ``EmptyStageError`` for an empty stage.
    QualityGateError
        The model is not good enough (exit 3); nothing was published.
    PublishError
        Redis unavailable or the write failed (exit 4); the live version is untouched.
    """
    with run_lock(settings.run.lock_file):
        record = records.start_run(
            settings.run.runs_dir, _parameters(settings, run_date, dry_run, gate)
        )
        log.info("run %s started (%s)", record.run_id, record.run_dir)
        started = time.perf_counter()
        client = None
        summary: dict[str, Any] | None = None
        try:
            # Fail fast on an unreachable Redis (exit 4) before an expensive training run.
            client = quality_gate.connect_for_gate(settings, dry_run)
            state = RunState(settings, record, run_date, dry_run, gate, client)
            with progress_events.reporting(progress):
                run_stages(state, STAGES, progress)
            result = _finish(state)
            summary = records.run_summary(
                record, result.status, time.perf_counter() - started,
                users=result.users, version=result.version,
            )  # fmt: skip
        except BaseException as exc:
            status = "gate-refused" if isinstance(exc, QualityGateError) else "failed"
            error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(RecsysError):
                records.finish_run(record, status, error)
            summary = records.run_summary(
                record, status, time.perf_counter() - started, error=error
            )
            raise
        finally:
            run_shards.remove(settings, record)
            if client is not None:
                if summary is not None:
                    run_log.push_summary(client, summary, settings.redis)
                client.close()
        return result


def run_stages(
    state: RunState,
    stage_list: list[tuple[str, Stage]],
    progress: progress_events.Progress | None = None,
) -> None:
    """Run each stage in order; time it, log it, record it in the manifest and report it."""
    events = progress if progress is not None else progress_events.NO_PROGRESS
    for index, (name, stage) in enumerate(stage_list, start=1):
        events.stage_started(name, index, len(stage_list))
        started = time.perf_counter()
        rows = stage(state)
        seconds = time.perf_counter() - started
        events.stage_finished(name, rows, seconds, _note(state, name))
        peak = records.peak_memory_mb()
        state.record.stages.append(records.StageRecord(name, rows, seconds, peak))
        log.info(
            "stage %-17s rows=%-9d %6.2fs  peak %5.0f MiB",
            name,
            rows,
            seconds,
            peak,
            extra={
                "fields": {
                    "stage": name,
                    "rows": rows,
                    "seconds": round(seconds, 3),
                    "peak_mb": round(peak, 1),
                }
            },
        )


def _note(state: RunState, name: str) -> str:
    """A stage's one-line result for the progress display (the gate's decision)."""
    if name != "gate":
        return ""
    decision = state.record.metrics.get("gate")
    if isinstance(decision, dict):
        return f"passed: {decision.get('metric')} {float(decision.get('value') or 0):.4f}"
    return "skipped" if decision == "skipped" else ""


def _parameters(
    settings: Settings, run_date: date | None, dry_run: bool, gate: bool
) -> dict[str, Any]:
    settings_json = settings.model_dump(mode="json")
    settings_json["redis"]["url"] = store.mask_url(settings.redis.url)
    return {
        "settings": settings_json,
        "run_date": run_date.isoformat() if run_date else None,
        "dry_run": dry_run,
        "gate": gate and settings.gate.enabled,
        "redis": store.describe(settings.redis),
    }


def _finish(state: RunState) -> RunResult:
    record = state.record
    record.peak_memory_mb = records.peak_memory_mb()
    status = "dry-run" if state.dry_run else "published"
    records.finish_run(record, status)
    log.info(
        "run %s %s: %d users, version %s, %.1fs, peak %.0f MiB",
        record.run_id,
        status,
        state.users,
        state.version or "-",
        sum(s.seconds for s in record.stages),
        record.peak_memory_mb,
    )
    return RunResult(
        run_id=record.run_id,
        run_dir=record.run_dir,
        status=status,
        version=state.version,
        users=state.users,
        metrics=record.metrics,
        stages=record.stages,
        peak_memory_mb=record.peak_memory_mb,
    )
