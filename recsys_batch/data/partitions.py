"""Parquet folders of a frame's rows split by a key, written in one streaming pass.

The run's user shards (``run.sharding``) and the prefilter's item parts
(``model.prefilter.item_stats_in_parts``) are both written this way: one pass over every
line puts each line in its part's folder, and each part is then read on its own.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import polars as pl

Location = Path | str
"""A local or mounted folder, or an object-store URL (``s3://bucket/x``, ``gs://...``,
``file:///...``) that Polars reads and writes natively."""

ROW_GROUP = 32_768
"""Rows per parquet row group of a part file. The partitioned sink keeps one open row group
per part, so its memory grows with the number of parts, that is with the customers or lines
(user shards, default row groups: 663 MiB for 5 shards, 1,324 MiB for 80 on 13.6M lines;
32,768 rows: 671 and 862 MiB, ~1.8 MiB per shard). Smaller groups cost when a part is read
back (one 2.8M-line shard at 40x: 439 MiB peak with 32,768 rows, 542 with the default, 644
with 8,192); issue #28."""


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


def part_dir(folder: Location, key: str, part: int) -> Location:
    """Where :func:`write_parts` puts the rows of ``part`` of ``key`` (one or more files)."""
    return join(folder, f"{key}={part:05d}")


def scan_part(folder: Location, key: str, part: int) -> pl.LazyFrame:
    """The rows :func:`write_parts` wrote for ``part`` of ``key``."""
    files = join(part_dir(folder, key, part), "*.parquet")
    return pl.scan_parquet(str(files), hive_partitioning=False)


def write_parts(
    frame: pl.LazyFrame, part: pl.Expr, n_parts: int, folder: Location
) -> list[Location]:
    """Write the rows of ``frame`` to one folder per part, in one streaming pass.

    Parameters
    ----------
    part
        Each row's part (integer in ``0 .. n_parts - 1``); its output name is the key of the
        folders (``<key>=00003/part-00000.parquet``), a column the files do not hold.

    Returns
    -------
    list
        Folder of part ``p`` at position ``p`` (a part without rows gets an empty file).
    """
    # Absolute, and file names relative to it: the partitioned sink joins the provider's
    # path onto its base (a relative base would be doubled: runs/x/shards/runs/x/shards/...).
    folder = absolute(folder)
    if not is_url(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
    schema = frame.collect_schema()
    key = part.meta.output_name()

    def path_of(args: pl.io.partition.FileProviderArgs) -> str:
        index = int(args.partition_keys.item(0, 0))
        return f"{key}={index:05d}/part-{args.index_in_partition:05d}.parquet"

    frame.with_columns(part).sink_parquet(
        pl.PartitionBy(str(folder), key=key, include_key=False, file_path_provider=path_of),
        mkdir=True,
        row_group_size=ROW_GROUP,
    )
    paths = [part_dir(folder, key, p) for p in range(n_parts)]
    for path in paths:
        if is_url(path):  # listing a bucket costs a request per part: an empty file each
            pl.DataFrame(schema=schema).write_parquet(str(join(path, "part-empty.parquet")))
        elif not any(Path(path).glob("*.parquet")):
            Path(path).mkdir(parents=True, exist_ok=True)
            pl.DataFrame(schema=schema).write_parquet(Path(path) / "part-00000.parquet")
    return paths
