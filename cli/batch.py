"""``recsys nightly-batch``, ``recsys status`` and ``recsys rollback`` (issue #5).

Exit codes: 0 published (or dry run done), 1 unexpected, 2 bad input or config, 3 quality
gate refused, 4 Redis unavailable or publish failed, 5 another run holds the lock.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer

from cli.common import (
    ConfigOpt,
    DebugOpt,
    PathOpt,
    SourceOpt,
    build_settings,
    console,
    run_guarded,
    setup_logging,
)
from cli.progress import live_progress
from recsys_batch.config import PublishConfig

TOP_N = PublishConfig.model_fields["top_n"].default
NIGHTLY_HELP = (
    "Train, score every known user and publish each one's top N items "
    f"(publish.top_n, default {TOP_N}) to Redis atomically."
)

RunDateOpt = Annotated[
    datetime | None,
    typer.Option(
        "--run-date",
        formats=["%Y-%m-%d"],
        help="Treat transactions after this date (YYYY-MM-DD) as unseen.",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Do everything except publishing to Redis.")
]
NoGateOpt = Annotated[
    bool,
    typer.Option(
        "--no-gate",
        help="Skip the quality gate (and its backtest); the ranker is then trained on the "
        "newest weeks instead of reusing the gate's.",
    ),
]
LogFormatOpt = Annotated[
    str,
    typer.Option("--log-format", help="human (default) or json (one object per line)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="Where the per-shard scoring and publishing runs: local or dask "
        "(default: scale.executor).",
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Dask scheduler address, e.g. tcp://host:8786 (implies --executor dask; "
        "default: a LocalCluster on this machine).",
    ),
]


def _check_executor(executor: str | None) -> str | None:
    if executor is not None and executor not in {"local", "dask"}:
        msg = f"--executor must be local or dask, got {executor!r}"
        raise typer.BadParameter(msg)
    return executor


def with_executor(settings: Any, executor: str | None, scheduler: str | None) -> Any:
    """``settings`` with ``--executor`` / ``--scheduler`` applied to its ``scale`` section."""
    update: dict[str, Any] = {}
    if scheduler is not None:
        update.update(executor="dask", scheduler_address=scheduler)
    if executor is not None:
        update["executor"] = executor
    if not update:
        return settings
    return settings.model_copy(update={"scale": settings.scale.model_copy(update=update)})


def _check_log_format(log_format: str) -> str:
    if log_format not in {"human", "json"}:
        msg = f"--log-format must be human or json, got {log_format!r}"
        raise typer.BadParameter(msg)
    return log_format


def nightly_batch(
    source: SourceOpt = None,
    path: PathOpt = None,
    config: ConfigOpt = None,
    run_date: RunDateOpt = None,
    dry_run: DryRunOpt = False,
    no_gate: NoGateOpt = False,
    log_format: LogFormatOpt = "human",
    executor: ExecutorOpt = None,
    scheduler: SchedulerOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Train, score every known user and publish each one's top ``publish.top_n`` items."""
    setup_logging(_check_log_format(log_format), logging.DEBUG if debug else logging.INFO)
    _check_executor(executor)

    def work() -> None:
        from recsys_batch.run.pipeline import run_nightly  # noqa: PLC0415 - keeps --help fast

        settings = with_executor(build_settings(config, source, path), executor, scheduler)
        day: date | None = run_date.date() if run_date else None
        with live_progress("stages", log_format) as progress:
            result = run_nightly(
                settings, run_date=day, dry_run=dry_run, gate=not no_gate, progress=progress
            )
        summary = {
            "run_id": result.run_id,
            "status": result.status,
            "version": result.version,
            "users": result.users,
            "metrics": {k: v for k, v in result.metrics.items() if k != "gate"},
            "seconds": round(sum(s.seconds for s in result.stages), 2),
            "peak_memory_mb": round(result.peak_memory_mb, 1),
            "run_dir": str(result.run_dir),
        }
        if log_format == "json":
            console.print_json(json.dumps(summary, default=str))
        else:
            console.print(
                f"[bold green]{result.status}[/]: version {result.version or '-'}, "
                f"{result.users} users, {summary['seconds']}s, "
                f"peak {summary['peak_memory_mb']} MiB (run {result.run_dir})",
                soft_wrap=True,
            )

    run_guarded(work, debug=debug)


def _age(created_at: str | None) -> str:
    if not created_at:
        return "?"
    try:
        then = datetime.fromisoformat(created_at)
    except ValueError:
        return "?"
    seconds = int((datetime.now(UTC) - then).total_seconds())
    hours, rest = divmod(max(seconds, 0), 3600)
    return f"{hours}h{rest // 60:02d}m"


def status(config: ConfigOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Show the live version (age, users, metrics) and the previous one."""

    def work() -> None:
        from recsys_batch.publish import status, store  # noqa: PLC0415

        settings = build_settings(config)
        client = store.connect(settings.redis)
        info = status.publish_status(client, settings.redis)
        info["redis"] = store.describe(settings.redis)
        for name in ("live", "previous"):
            if info[name]:
                info[name]["age"] = _age(info[name]["meta"].get("created_at"))
        if as_json:
            console.print_json(json.dumps(info, default=str))
            return
        _print_status(info)

    run_guarded(work, debug=debug)


def _print_status(info: dict[str, Any]) -> None:
    console.print(f"Redis: {info['redis']}")
    live = info["live"]
    if not live:
        console.print("no live version yet (run `recsys nightly-batch`)")
        return
    metrics = ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in live["metrics"].items()
    )
    meta = live["meta"]
    console.print(
        f"live:     {live['version']}  age {live['age']}  users {live['users']}  "
        f"run {meta.get('run_id', '?')}  data days {meta.get('first_day', '?')}.."
        f"{meta.get('last_day', '?')}",
        soft_wrap=True,
    )
    console.print(f"metrics:  {metrics or '-'}", soft_wrap=True)
    previous = info["previous"]
    if previous:
        console.print(
            f"previous: {previous['version']}  age {previous['age']}  users {previous['users']}"
            f"  state {previous['state'] or 'expired'}",
            soft_wrap=True,
        )
    else:
        console.print("previous: none")


def rollback(config: ConfigOpt = None, debug: DebugOpt = False) -> None:
    """Make the previous version live again (run twice to undo)."""

    def work() -> None:
        from recsys_batch.publish import store, versions  # noqa: PLC0415

        settings = build_settings(config)
        client = store.connect(settings.redis)
        restored, demoted = versions.rollback(client, settings.redis)
        console.print(f"rolled back: live version {restored} (was {demoted})")

    run_guarded(work, debug=debug)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("nightly-batch", help=NIGHTLY_HELP)(nightly_batch)
    app.command("status")(status)
    app.command("rollback")(rollback)
