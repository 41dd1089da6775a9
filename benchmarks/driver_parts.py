"""Peak memory of each thing the driver computes over every customer, old way and new (#28).

Each measurement runs in a fresh process (``ru_maxrss`` is a process's high-water mark) on
one synthetic folder; the catalogue-applied shard files are written once first (and timed,
with the process's peak: the partitioned sink). Compare two folders to see what grows::

    python benchmarks/driver_parts.py --path DIR/10x --work DIR/parts10
    python benchmarks/driver_parts.py --path DIR/40x --work DIR/parts40

``old`` are the driver's queries before issue #28 item 2 (default engine over every line),
``new`` the ones the nightly batch runs now (streaming, or one shard file at a time).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_batch.config import Settings, load_settings  # noqa: E402
from recsys_batch.data import columns as C  # noqa: E402
from recsys_batch.data.frames import rows_and_users  # noqa: E402
from recsys_batch.data.sources import load_dataset  # noqa: E402
from recsys_batch.model import split, two_stage  # noqa: E402
from recsys_batch.model.prefilter import apply_catalogue, item_stats_in_parts, prefilter  # noqa: E402
from recsys_batch.run import driver_tables, sharding  # noqa: E402
from recsys_batch.run import executors as E  # noqa: E402
from recsys_batch.run import shard_task as T  # noqa: E402

PARTS = ("week_range", "users_list", "popular", "reference_row")


def settings_for(path: Path) -> Settings:
    return load_settings(data={"source": "synthetic", "path": str(path)})


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> float:
    """Reset this process's peak resident set to its current one (Linux ``clear_refs`` 5)
    and return it: what a query adds is then ``VmHWM`` minus this."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_mib("VmRSS")


def prepare(path: Path, work: Path) -> dict[str, object]:
    """Users, shard count, catalogue and the shard files of ``path`` under ``work``."""
    settings = settings_for(path)
    tx = load_dataset(settings.data).transactions
    rows, users = rows_and_users(tx)
    n_parts = -(-rows // settings.scale.in_memory_rows)
    stats = item_stats_in_parts(tx, n_parts, users, folder=work / "item_parts")
    catalogue = prefilter(tx, None, settings.prefilter, stats).catalogue.collect(engine="streaming")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    catalogue.write_parquet(work / "catalogue.parquet")
    n_shards = sharding.shard_count(users, settings.scale.shard_users)
    started = time.perf_counter()
    before = peak_mib()
    sharding.write_shards(
        apply_catalogue(tx, catalogue.lazy(), settings.prefilter), n_shards, work / "shards"
    )
    return {
        "rows": rows,
        "users": users,
        "shards": n_shards,
        "write_shards_s": round(time.perf_counter() - started, 1),
        "prepare_peak_mib": round(max(before, peak_mib())),
    }


def measure(path: Path, work: Path, part: str, way: str, n_shards: int) -> float:
    """Peak MiB of this process after computing ``part`` the ``way`` way."""
    settings = settings_for(path)
    raw = load_dataset(settings.data).transactions
    shards = sharding.scan_shards(work / "shards")
    catalogue = pl.scan_parquet(work / "catalogue.parquet")
    baseline = reset_peak()
    if part == "week_range":
        if way == "old":
            split.week_range(raw)
        else:
            weeks = raw.select(pl.col(C.WEEK).min().alias("lo"), pl.col(C.WEEK).max().alias("hi"))
            weeks.collect(engine="streaming")
    elif part == "users_list":
        if way == "old":
            E.plan_shards(shards.select(C.USER).unique().sort(C.USER), n_shards)
        else:
            ctx = T.ShardContext(None, pl.DataFrame(), pl.DataFrame(), pl.DataFrame(), settings,
                                 n_shards, shards_dir=work / "shards")  # fmt: skip
            for _ in E.ContextShards(ctx):
                pass
    elif part == "popular":
        if way == "old":
            two_stage.popular_fallback(shards, catalogue, 5)
        else:
            parts = [sharding.scan_shard(work / "shards", s) for s in range(n_shards)]
            driver_tables.popular_by_parts(parts, catalogue, 5)
    elif part == "reference_row":
        query = shards.top_k(1, by=[C.DAY, C.USER, C.BASKET, C.ITEM])
        query.collect() if way == "old" else query.collect(engine="streaming")
    return status_mib("VmHWM") - baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--one", nargs=3, metavar=("PART", "WAY", "SHARDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        part, way, n_shards = args.one
        print(json.dumps({"mib": measure(args.path, args.work, part, way, int(n_shards))}))
        return
    prepared = prepare(args.path, args.work)
    print(json.dumps(prepared), flush=True)
    for part in PARTS:
        for way in ("old", "new"):
            cmd = [sys.executable, __file__, "--path", str(args.path), "--work", str(args.work),
                   "--one", part, way, str(prepared["shards"])]  # fmt: skip
            started = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            mib = json.loads(out.splitlines()[-1])["mib"]
            seconds = time.perf_counter() - started
            print(f"{part:14s} {way}: +{mib:7.0f} MiB over the RSS before it ({seconds:.1f} s)",
                  flush=True)  # fmt: skip
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
