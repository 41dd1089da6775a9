"""The run history list ``P:runs`` (issue #19)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.publish import keys, run_log
from recsys_batch.run import records


def _record(tmp_path: Path, metrics: dict[str, Any] | None = None) -> records.RunRecord:
    record = records.RunRecord("20261128T031500Z-9c2e", tmp_path, "2026-11-28T03:15:00+00:00")
    record.metrics = metrics or {}
    record.data = {"first_day": 1, "last_day": 711}
    return record


def test_runs_key_golden() -> None:
    assert keys.runs_key() == "recsys:runs"
    assert keys.runs_key("t1") == "t1:runs"


@pytest.mark.parametrize(
    ("metrics", "status", "gate", "value"),
    [
        (
            {"precision@5": 0.21, "gate": {"metric": "precision@5", "value": 0.21}},
            "published",
            "passed",
            0.21,
        ),
        ({"gate": "skipped"}, "dry-run", "skipped", None),
        # The gate's backtest measured the value before refusing it: the summary keeps it.
        ({"precision@5": 0.12, "gate": {"metric": "precision@5"}}, "gate-refused", "refused", 0.12),
        ({}, "gate-refused", "refused", None),
        ({}, "failed", None, None),
    ],
)
def test_summary_fields(
    tmp_path: Path, metrics: dict[str, Any], status: str, gate: str | None, value: float | None
) -> None:
    summary = records.run_summary(_record(tmp_path, metrics), status, 12.345, users=300)
    assert summary["status"] == status
    assert (summary["gate"], summary["gate_value"]) == (gate, value)
    assert (summary["seconds"], summary["users"], summary["data_days"]) == (12.35, 300, [1, 711])
    assert summary["run_id"] == "20261128T031500Z-9c2e"
    assert summary["started_at"] == "2026-11-28T03:15:00+00:00"


def test_newest_first_capped(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    cfg = RedisConfig(key_prefix="t")
    for n in range(run_log.MAX_RUNS + 5):
        summary = records.run_summary(_record(tmp_path), "published", float(n))
        assert run_log.push_summary(client, summary, cfg)
    stored = [json.loads(v) for v in client.lrange(keys.runs_key("t"), 0, -1)]
    assert len(stored) == run_log.MAX_RUNS
    assert stored[0]["seconds"] == run_log.MAX_RUNS + 4  # newest first


class _Down:
    def pipeline(self, transaction: bool = False) -> Any:
        raise redis.ConnectionError("Connection refused")


def test_redis_failure_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    summary = records.run_summary(_record(tmp_path), "failed", 1.0, error="x" * 1000)
    assert len(summary["error"]) == records.MAX_ERROR_CHARS
    assert run_log.push_summary(_Down(), summary, RedisConfig()) is False  # type: ignore[arg-type]
    assert run_log.push_summary(None, summary, RedisConfig()) is False
    assert "run summary not written" in caplog.text
