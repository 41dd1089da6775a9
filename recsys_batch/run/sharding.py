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

import math

import polars as pl

from recsys_batch.data import columns as C
from recsys_batch.data.partitions import (
    ROW_GROUP,
    Location,
    absolute,
    is_url,
    join,
    part_dir,
    remove,
    scan_part,
    write_parts,
)
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


def shard_dir(folder: Location, shard: int) -> Location:
    """Where :func:`write_shards` puts the rows of ``shard`` (one or more parquet files)."""
    return part_dir(folder, SHARD, shard)


def scan_shard(folder: Location, shard: int) -> pl.LazyFrame:
    """The rows :func:`write_shards` wrote for ``shard``."""
    return scan_part(folder, SHARD, shard)


def scan_shards(folder: Location) -> pl.LazyFrame:
    """The rows of every shard :func:`write_shards` wrote under ``folder``."""
    return pl.scan_parquet(str(join(folder, "*", "*.parquet")), hive_partitioning=False)


SHARD_ROW_GROUP = ROW_GROUP
"""Rows per parquet row group of a shard file (:data:`recsys_batch.data.partitions.ROW_GROUP`:
~1.8 MiB per open shard in the partitioned sink instead of ~8.7 MiB; issue #28)."""


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
    return write_parts(frame, shard_of(n_shards), n_shards, folder)


# Re-exported: the run's callers.
__all__ = [
    "Location",
    "absolute",
    "is_url",
    "join",
    "remove",
    "sample_users",
    "stable_hash",
    "user_hash",
]
