"""Run bookkeeping: ``runs/<run_id>/manifest.json`` and the trained models (issue #5).

A manifest holds everything needed to inspect or reproduce a run: the full settings, the data
source and range, row counts and seconds per stage, metrics, the published version and the
peak memory. It is written atomically (temp file + rename), once at the start (status
``running``) and again at the end, so a crashed run still leaves a readable manifest.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys_batch.errors import ConfigError

MANIFEST = "manifest.json"
MODELS = "models"
MAX_ERROR_CHARS = 300
"""A run summary keeps this much of the error message."""


def new_run_id(now: datetime | None = None) -> str:
    """A unique run id such as ``20261128T031500.123Z-9c2e``, in start order when sorted.

    Milliseconds, so that runs started within one second (tests; fast retries) still sort in
    the order they started.
    """
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"


PROC_STATUS = Path("/proc/self/status")


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own
    memory. ``ru_maxrss`` survives fork and exec, so a Dask worker spawned from the batch
    process would report the batch's peak as its own. Elsewhere: ``ru_maxrss``.
    """
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:  # not Linux
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


@dataclass
class StageRecord:
    """One pipeline stage: output rows, wall seconds and the process's peak memory after it."""

    name: str
    rows: int
    seconds: float
    peak_mb: float = 0.0
    """:func:`peak_memory_mb` when the stage ended: the first stage where it jumps set the
    run's peak."""


@dataclass
class RunRecord:
    """What ``runs/<run_id>/manifest.json`` contains."""

    run_id: str
    run_dir: Path
    started_at: str
    status: str = "running"
    parameters: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    error: str | None = None
    peak_memory_mb: float = 0.0
    shard_peak_memory_mb: float | None = None
    """Peak resident memory of the processes that scored the shards: this process with the
    local executor, the largest Dask worker's with ``--executor dask`` (None: no shard ran)."""
    finished_at: str | None = None

    @property
    def models_dir(self) -> Path:
        """Where the trained models of this run are saved."""
        return self.run_dir / MODELS

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "version": self.version,
            "error": self.error,
            "data": self.data,
            "stages": [
                {
                    "name": s.name,
                    "rows": s.rows,
                    "seconds": round(s.seconds, 3),
                    "peak_mb": round(s.peak_mb, 1),
                }
                for s in self.stages
            ],
            "total_seconds": round(sum(s.seconds for s in self.stages), 3),
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "shard_peak_memory_mb": (
                None if self.shard_peak_memory_mb is None else round(self.shard_peak_memory_mb, 1)
            ),
            "metrics": self.metrics,
            "parameters": self.parameters,
        }


def start_run(runs_dir: Path, parameters: dict[str, Any], run_id: str | None = None) -> RunRecord:
    """Create ``runs_dir/<run_id>/`` and write the initial manifest.

    Raises
    ------
    ConfigError
        The runs directory is not writable (full or read-only disk); nothing was published.
    """
    run_id = run_id or new_run_id()
    record = RunRecord(
        run_id=run_id,
        run_dir=Path(runs_dir) / run_id,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parameters=parameters,
    )
    try:
        record.models_dir.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        msg = (
            f"cannot create the run directory {record.run_dir}: {exc} "
            "(fix: free disk space or set RECSYS_RUN__RUNS_DIR to a writable directory)"
        )
        raise ConfigError(msg) from exc
    write_manifest(record)
    return record


def write_manifest(record: RunRecord) -> Path:
    """Write the manifest atomically; return its path.

    Raises
    ------
    ConfigError
        The disk is full or read-only.
    """
    record.peak_memory_mb = max(record.peak_memory_mb, peak_memory_mb())
    target = record.run_dir / MANIFEST
    try:
        fd, tmp = tempfile.mkstemp(dir=record.run_dir, prefix=".manifest.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(record.to_json(), handle, indent=2, default=str)
            handle.write("\n")
        os.replace(tmp, target)
    except OSError as exc:
        msg = (
            f"cannot write {target}: {exc} "
            "(fix: free disk space or make the runs directory writable)"
        )
        raise ConfigError(msg) from exc
    return target


def finish_run(record: RunRecord, status: str, error: str | None = None) -> Path:
    """Record the final status (``published``, ``dry-run``, ``failed``...) and rewrite."""
    record.status = status
    record.error = error
    record.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    return write_manifest(record)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of one run directory."""
    return json.loads((Path(run_dir) / MANIFEST).read_text())


def run_summary(
    record: RunRecord,
    status: str,
    seconds: float,
    *,
    users: int = 0,
    version: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The JSON-ready summary of one run, as ``publish.run_log`` pushes it to ``P:runs``.

    ``gate`` is ``passed``, ``skipped``, ``refused`` (status ``gate-refused``) or None when
    the run failed before the gate decided; ``gate_value`` is the gate metric's value
    whenever the gate's backtest measured it (passed or refused).
    """
    decision = record.metrics.get("gate")
    gate_metric = gate_value = None
    gate: str | None = "refused" if status == "gate-refused" else None
    if isinstance(decision, dict):
        gate_metric = decision.get("metric")
        gate_value = record.metrics.get(gate_metric) if gate_metric else None
        if gate is None and "value" in decision:
            gate = "passed"
    elif decision == "skipped":
        gate = "skipped"
    return {
        "run_id": record.run_id,
        "status": status,
        "started_at": record.started_at,
        "seconds": round(seconds, 2),
        "users": users,
        "version": version,
        "gate": gate,
        "gate_metric": gate_metric,
        "gate_value": gate_value,
        "data_days": [record.data["first_day"], record.data["last_day"]]
        if "first_day" in record.data
        else None,
        "error": error[:MAX_ERROR_CHARS] if error else None,
    }
