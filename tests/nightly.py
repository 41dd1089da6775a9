"""The real ``recsys nightly-batch`` on small synthetic data, for tests that publish.

A test that puts a version into Redis runs the shipped night (real ALS and LightGBM with the
small settings of :mod:`tests.small`, a few hundred synthetic users, several shards), then
compares Redis with the recommendations the run saved under its run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from recsys_batch.config import RedisConfig, Settings
from recsys_batch.data import columns as C
from recsys_batch.publish import keys, status
from recsys_batch.run import stages
from tests.small import SMALL_SETTINGS


def small_run_settings(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    *,
    users: int = 300,
    shard_users: int = 100,
    **sections: dict[str, Any],
) -> Settings:
    """:data:`SMALL_SETTINGS` on ``users`` synthetic users, publishing to ``redis_url``.

    ``sections`` update single fields of a section, e.g. ``gate={"min_precision_at_5": 0.99}``.
    """
    merged = SMALL_SETTINGS.model_dump()
    merged["data"].update(source="synthetic", synthetic_users=users)
    merged["scale"].update(shard_users=shard_users)
    merged["run"].update(runs_dir=tmp_path / "runs", lock_file=tmp_path / "nightly.lock")
    merged["redis"].update(url=redis_url, key_prefix=key_prefix, retry_backoff_seconds=0.01)
    for section, values in sections.items():
        merged[section].update(values)
    return Settings.model_validate(merged)


def shard_files(run_dir: Path) -> list[Path]:
    """The run's ``recommendations.parquet/shard=NNNNN.parquet`` files, in shard order."""
    return sorted((run_dir / stages.RECOMMENDATIONS_FILE).glob("shard=*.parquet"))


def saved_recommendations(run_dir: Path) -> pl.DataFrame:
    """Every shard's recommendations of the run (schema ``RECOMMENDATIONS``)."""
    return pl.concat([pl.read_parquet(path) for path in shard_files(run_dir)])


def expected_values(recs: pl.DataFrame) -> dict[int, list[int]]:
    """``user_id`` -> the items Redis must hold for the user, best first."""
    lists = recs.sort(C.USER, C.RANK).group_by(C.USER, maintain_order=True).agg(C.ITEM)
    return dict(lists.iter_rows())


def stored_values(
    client: Any, version: str, prefix: str, users: list[int] | None = None
) -> dict[int, list[int]]:
    """``user_id`` -> the items ``version`` holds, read back through the format-2 helpers
    (``status.version_user_ids`` / ``status.user_items``): every user, or only ``users``."""
    cfg = RedisConfig(key_prefix=prefix)
    wanted = status.version_user_ids(client, version, cfg) if users is None else users
    return status.user_items(client, version, wanted, cfg)


def user_bucket_keys(client: Any, version: str, prefix: str, users: list[int]) -> set[str]:
    """The bucket hashes (``u``, ``t`` when a user has > 16 items, ``r``, ``n`` and ``w`` when
    the user has a new-items list) ``users`` occupy."""
    cfg = RedisConfig(key_prefix=prefix)
    buckets = status.version_buckets(client, version, cfg)
    lists = status.user_items(client, version, users, cfg)
    new_lists = status.user_new_items(client, version, users, cfg)
    found = set()
    for user in users:
        bucket = keys.bucket_of(user, buckets)
        found.add(keys.user_bucket_key(version, bucket, prefix, "u"))
        found.add(keys.user_bucket_key(version, bucket, prefix, "r"))
        if len(lists.get(user, ())) > keys.ITEMS_PER_FIELD:
            found.add(keys.user_bucket_key(version, bucket, prefix, "t"))
        if new_lists.get(user):
            found.add(keys.user_bucket_key(version, bucket, prefix, "n"))
            found.add(keys.user_bucket_key(version, bucket, prefix, "w"))
    return found


def version_keys(client: Any, version: str, prefix: str) -> set[str]:
    """Every key of ``version`` (SCAN; on a cluster client, over all masters)."""
    pattern = keys.version_prefix(version, prefix) + "*"
    return {
        name.decode() if isinstance(name, bytes) else name
        for name in client.scan_iter(match=pattern, count=10_000)
    }
