"""User shards: a stable hash of ``user_id`` decides which shard scores and publishes a user.

The hash is SplitMix64's finaliser written as Polars integer arithmetic (wrapping ``UInt64``
multiplications, shifts as divisions by powers of two), so it is the same on every machine,
process, Polars version and run: a user stays in the same shard night after night, and a
Dask worker computes exactly the shard the driver planned. Polars' own ``hash`` is seeded
per version and documented as unstable, hence not used.

The number of shards follows the number of users (``ceil(users / shard_users)``), so the
memory of one shard's candidates, features and scores is set by ``shard_users``, not by the
size of the customer base (issue #8).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path

import polars as pl

from recsys_batch.data import columns as C
from recsys_batch.data.user_hash import sample_users, stable_hash, u64, user_hash

SHARD = "shard"
"""Column holding a user's shard number (UInt32, 0 .. n_shards - 1)."""


def _require_positive(value: int, name: str, fix: str = "") -> None:
    if value < 1:
        msg = f"{name} must be at least 1, got {value}{fix}"
        raise ValueError(msg)


def shard_of(n_shards: int, user: pl.Expr | str = C.USER) -> pl.Expr:
    """The shard (``UInt32`` in ``0 .. n_shards - 1``) of each user id.

    Raises
    ------
    ValueError
        ``n_shards`` is below 1.
    """
    _require_positive(n_shards, "n_shards")
    return (user_hash(user) % u64(n_shards)).cast(pl.UInt32).alias(SHARD)


def shard_count(n_users: int, shard_users: int) -> int:
    """Shards needed so that one holds about ``shard_users`` users (at least 1).

    Raises
    ------
    ValueError
        ``shard_users`` is below 1.
    """
    _require_positive(shard_users, "shard_users", fix=" (fix: scale.shard_users)")
    return max(1, math.ceil(n_users / shard_users))


def with_shard(frame: pl.LazyFrame, n_shards: int) -> pl.LazyFrame:
    """``frame`` plus the ``shard`` column of its ``user_id``."""
    return frame.with_columns(shard_of(n_shards))


def user_shards(users: pl.LazyFrame, n_shards: int) -> list[pl.DataFrame]:
    """The distinct users split into ``n_shards`` frames (one ``user_id`` column, sorted).

    Every user is in exactly one shard; a shard may be empty when users are very few.
    """
    assigned = (
        users.select(pl.col(C.USER).cast(pl.Int64))
        .unique()
        .pipe(with_shard, n_shards)
        .sort(SHARD, C.USER)
        .collect()
    )
    parts = {key[0]: part for key, part in assigned.partition_by(SHARD, as_dict=True).items()}
    empty = pl.DataFrame(schema={C.USER: pl.Int64})
    return [parts[s].select(C.USER) if s in parts else empty.clone() for s in range(n_shards)]


Location = Path | str
"""A local or mounted folder, or an object-store URL (``s3://bucket/x``, ``gs://...``,
``file:///...``) that Polars reads and writes natively."""


def is_url(location: Location) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a filesystem path."""
    return isinstance(location, str) and "://" in location


def absolute(location: Location) -> Location:
    """``location`` independent of any current directory: a resolved path, or the URL."""
    if is_url(location):
        return str(location).rstrip("/")
    return Path(location).expanduser().resolve()


def join(location: Location, *parts: str) -> Location:
    """``location / part / ...`` for a path or a URL (a URL keeps its ``//``)."""
    if is_url(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return Path(location).joinpath(*parts)


def remove(location: Location) -> None:
    """Delete the folder ``location`` and everything under it; a missing one is fine."""
    if not is_url(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    import fsspec  # noqa: PLC0415 - a dask dependency, needed only for URLs

    fs, path = fsspec.core.url_to_fs(str(location))
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def shard_dir(folder: Location, shard: int) -> Location:
    """Where :func:`write_shards` puts the rows of ``shard`` (one or more parquet files)."""
    return join(folder, f"{SHARD}={shard:05d}")


def scan_shard(folder: Location, shard: int) -> pl.LazyFrame:
    """The rows :func:`write_shards` wrote for ``shard``."""
    files = join(shard_dir(folder, shard), "*.parquet")
    return pl.scan_parquet(str(files), hive_partitioning=False)


def scan_shards(folder: Location) -> pl.LazyFrame:
    """The rows of every shard :func:`write_shards` wrote under ``folder``."""
    return pl.scan_parquet(str(join(folder, "*", "*.parquet")), hive_partitioning=False)


SHARD_ROW_GROUP = 32_768
"""Rows per parquet row group of a shard file. The partitioned sink keeps one open row group
per shard, so its memory grows with the number of shards, that is with the customers
(default row groups: 663 MiB for 5 shards, 1,324 MiB for 80 on 13.6M lines; 32,768 rows:
671 and 862 MiB, ~1.8 MiB per shard). Smaller groups cost when a shard is read back (one
2.8M-line shard at 40x: 439 MiB peak with 32,768 rows, 542 with the default, 644 with
8,192); issue #28."""


def write_shards(frame: pl.LazyFrame, n_shards: int, folder: Location) -> list[Location]:
    """Write the rows of ``frame`` to one folder per user shard, in one streaming pass.

    A shard's task then reads only its own users' rows (:func:`scan_shard`), wherever it runs
    (on a cluster, ``folder`` must be storage every worker can read: a shared mount or an
    object-store URL).

    Returns
    -------
    list
        Folder of shard ``s`` at position ``s`` (a shard without rows gets an empty file).
    """
    # Absolute, and file names relative to it: the partitioned sink joins the provider's
    # path onto its base (a relative base would be doubled: runs/x/shards/runs/x/shards/...).
    folder = absolute(folder)
    if not is_url(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
    schema = frame.collect_schema()

    def path_of(args: pl.io.partition.FileProviderArgs) -> str:
        shard = int(args.partition_keys.item(0, 0))
        return f"{SHARD}={shard:05d}/part-{args.index_in_partition:05d}.parquet"

    frame.with_columns(shard_of(n_shards)).sink_parquet(
        pl.PartitionBy(str(folder), key=SHARD, include_key=False, file_path_provider=path_of),
        mkdir=True,
        row_group_size=SHARD_ROW_GROUP,
    )
    paths = [shard_dir(folder, s) for s in range(n_shards)]
    for path in paths:
        if is_url(path):  # listing a bucket costs a request per shard: an empty file each
            pl.DataFrame(schema=schema).write_parquet(str(join(path, "part-empty.parquet")))
        elif not any(Path(path).glob("*.parquet")):
            Path(path).mkdir(parents=True, exist_ok=True)
            pl.DataFrame(schema=schema).write_parquet(Path(path) / "part-00000.parquet")
    return paths


__all__ = ["sample_users", "stable_hash", "user_hash"]  # re-exported: the run's callers
