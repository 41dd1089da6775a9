"""Run manifests under runs/<run_id>/ (issue #5)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recsys_batch.errors import ConfigError
from recsys_batch.run import records


class TestRuns:
    def test_manifest_written_at_start_and_finish(self, tmp_path: Path) -> None:
        record = records.start_run(tmp_path, {"seed": 42}, run_id="r1")
        assert record.models_dir.is_dir()
        assert records.read_manifest(record.run_dir)["status"] == "running"
        record.stages.append(records.StageRecord("load", 10, 0.5, 812.25))
        record.metrics = {"precision@5": 0.2}
        record.version = "v1"
        records.finish_run(record, "published")
        manifest = records.read_manifest(record.run_dir)
        assert manifest["status"] == "published"
        assert manifest["stages"] == [
            {"name": "load", "rows": 10, "seconds": 0.5, "peak_mb": 812.2}
        ]
        assert manifest["parameters"] == {"seed": 42}
        assert manifest["version"] == "v1"
        assert manifest["peak_memory_mb"] > 0
        assert not [p for p in record.run_dir.iterdir() if p.name.startswith(".manifest")]

    def test_run_ids_sortable_and_unique(self) -> None:
        ids = [records.new_run_id() for _ in range(10)]
        assert len(set(ids)) > 1
        assert all(len(i) == len(ids[0]) for i in ids)
        # Runs started within one second sort in start order (a random suffix would not).
        second = datetime(2026, 11, 30, 3, 15, 0, tzinfo=UTC)
        starts = [second.replace(microsecond=ms * 1000) for ms in (999, 5, 120, 0, 42)]
        by_id = sorted(starts, key=lambda start: records.new_run_id(start))
        assert by_id == sorted(starts)
        assert records.new_run_id(second).startswith("20261130T031500.000Z-")

    @pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
    def test_read_only_runs_dir_is_clear_config_error(self, tmp_path: Path) -> None:
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(ConfigError, match="cannot create the run directory"):
                records.start_run(tmp_path / "runs", {})
        finally:
            tmp_path.chmod(0o700)

    def test_runs_dir_is_a_file_is_config_error(self, tmp_path: Path) -> None:
        blocker = tmp_path / "runs"
        blocker.write_text("not a directory")
        with pytest.raises(ConfigError, match="fix:"):
            records.start_run(blocker, {})
