"""Where a nightly run keeps its per-shard transactions (out of core, or for Dask workers)."""

from __future__ import annotations

from pathlib import Path

from recsys_batch.config import Settings
from recsys_batch.run import records, sharding

SHARDS_DIR = "shards"
"""Out-of-core runs: the catalogue-applied transactions, one parquet folder per shard;
removed when the run ends."""


def dir_of(run_dir: Path) -> Path:
    """Where a run keeps its per-shard transactions by default (removed at the end)."""
    return run_dir / SHARDS_DIR


def location(settings: Settings, record: records.RunRecord) -> sharding.Location:
    """Absolute folder (or URL) of the run's per-shard transactions:
    ``<scale.shared_dir>/<run_id>/shards``, or ``<run_dir>/shards`` when unset."""
    shared = settings.scale.shared_dir
    if shared is None:
        return sharding.absolute(dir_of(record.run_dir))
    return sharding.join(sharding.absolute(shared), record.run_id, SHARDS_DIR)


def remove(settings: Settings, record: records.RunRecord) -> None:
    """Delete the run's shard inputs (and its folder under ``scale.shared_dir``)."""
    shared = settings.scale.shared_dir
    if shared is None:
        sharding.remove(location(settings, record))
    else:
        sharding.remove(sharding.join(sharding.absolute(shared), record.run_id))
