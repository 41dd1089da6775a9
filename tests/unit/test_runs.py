"""Run manifests under runs/<run_id>/ (issue #5)."""

from __future__ import annotations

import os
import re
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

    def test_run_ids_distinct_and_in_start_order_across_milliseconds(self) -> None:
        """Runs started within one second: one id each, sorting in start order (catches a
        timestamp cut to the second, where only the random suffix would order them)."""
        second = datetime(2026, 11, 30, 3, 15, 0, tzinfo=UTC)
        starts = [second.replace(microsecond=ms * 1000) for ms in (999, 5, 120, 0, 42)]
        ids = [records.new_run_id(start) for start in starts]
        assert len(set(ids)) == len(starts)
        assert sorted(ids) == [run_id for _, run_id in sorted(zip(starts, ids, strict=True))]
        assert all(re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{4}", run_id) for run_id in ids)
        assert records.new_run_id(second).startswith("20261130T031500.000Z-")

    def test_run_ids_of_one_instant_differ_by_their_random_suffix(self) -> None:
        """200 ids at one instant share at most 9 values: with a 16-bit suffix, 10 or more
        colliding pairs happen with probability 1.4e-12 (Poisson, 200 * 199 / 2 / 65536 =
        0.30 pairs expected). Catches a constant suffix (199 repeats) or one of 8 bits or
        fewer (about 61 repeats)."""
        instant = datetime(2026, 11, 30, 3, 15, 0, 120_000, tzinfo=UTC)
        ids = [records.new_run_id(instant) for _ in range(200)]
        assert len(ids) - len(set(ids)) <= 9

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


@pytest.mark.skipif(not records.PROC_STATUS.exists(), reason="Linux /proc only")
def test_a_spawned_process_reports_its_own_peak_not_its_parents() -> None:
    """A Dask worker is spawned from the batch process: its shards' peak must be its own.

    Mutation caught: ``ru_maxrss``, which keeps the parent's high-water mark across fork and
    exec (the child would report at least the 400 MiB held here).
    """
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    held = np.ones(400 * 1024 * 1024 // 8)  # 400 MiB, touched
    parent = records.peak_memory_mb()
    child = subprocess.run(
        [sys.executable, "-c", "from recsys_batch.run import records as r; "
         "print(r.peak_memory_mb())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert held.sum() > 0
    assert parent >= 400
    # The child never holds the parent's 400 MiB (it reports ~20 MiB): an inherited
    # high-water mark reports at least that much.
    assert float(child.stdout) < 400
