"""The prefilter's per-item statistics over every line: in one pass, in parts that each
filter every raw line (before), and in parts written once by item (issue #17, #28).

Out of core, ``recsys nightly-batch`` computes the prefilter's item statistics (buyers,
median unit price) over every raw transaction. One streaming pass holds every item's buyer
set and prices at once (``one_pass``); in parts of whole items (``scale.in_memory_rows``
lines each) one part at a time. ``filter`` is how the parts were read before #28: each part
filtered the whole raw scan by its item hash, so every part read every line; ``sink`` is the
shipped :func:`item_stats_in_parts`: one streaming pass writes the lines by item part, then
each part's file is read once. Each measurement runs in a child process, so each peak is its
own; the ways alternate (``--repeat`` rounds) so a shared machine's load hits them alike,
and their tables are compared (they must be equal). The users are counted once first (the
nightly's load stage does), outside the timings. (The shards' item features are computed
from the shard files, one part of whole users at a time: ``benchmarks/shard_profile.py``
times them.)

Run: ``python benchmarks/item_parts.py --source synthetic --path DIR/10x --parts 7
[--ways filter,sink] [--repeat 3]`` (``--parts`` 0: as the nightly chooses, one per
``scale.in_memory_rows`` lines).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from recsys_batch.config import Settings, load_settings
from recsys_batch.data import columns as C
from recsys_batch.data.frames import rows_and_users
from recsys_batch.data.sources import load_dataset
from recsys_batch.model.ids import item_part
from recsys_batch.model.prefilter import item_stats, item_stats_in_parts

WAYS = ("one_pass", "filter", "sink")


def _filtered(tx: pl.LazyFrame, n_parts: int, n_users: int) -> pl.LazyFrame:
    """Before #28: each part filters every raw line by its item hash (``n_parts`` passes)."""
    parts = [tx.filter(item_part(n_parts) == p) for p in range(n_parts)]
    return pl.concat([item_stats(part, n_users).collect() for part in parts]).lazy()


def _measure(settings: Settings, way: str, n_parts: int, n_users: int, out: str) -> None:
    """Child process: compute the table, write it to ``out`` with its wall and peak."""
    tx = load_dataset(settings.data).transactions
    started = time.perf_counter()
    if way == "one_pass":
        stats = item_stats_in_parts(tx, 1, folder=out + ".parts")
    elif way == "filter":
        stats = _filtered(tx, n_parts, n_users)
    else:
        stats = item_stats_in_parts(tx, n_parts, n_users, folder=out + ".parts")
    frame = stats.collect().sort(C.ITEM)
    seconds = time.perf_counter() - started
    frame.write_parquet(out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out + ".json").write_text(json.dumps({"seconds": seconds, "peak_mib": peak}))


def _run_child(settings: Settings, way: str, n_parts: int, n_users: int, out: str) -> dict:
    """One measurement in a fresh process; its figures."""
    child = multiprocessing.get_context("spawn").Process(
        target=_measure, args=(settings, way, n_parts, n_users, out)
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"prefilter statistics ({way}, {n_parts} parts) failed: {child.exitcode}")
    return json.loads(Path(out + ".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="completejourney")
    parser.add_argument("--path", default=None)
    parser.add_argument("--parts", type=int, default=0)
    parser.add_argument("--ways", default=",".join(WAYS), help="comma-separated, of " + str(WAYS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every way, interleaved")
    args = parser.parse_args()
    ways = args.ways.split(",")
    settings = load_settings(data={"source": args.source, "path": args.path})
    tx = load_dataset(settings.data).transactions
    rows, users = rows_and_users(tx)
    n_parts = args.parts or max(1, -(-rows // settings.scale.in_memory_rows))
    frames = {}
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.repeat):
            for way in ways:
                out = str(Path(work) / f"{way}-{round_}.parquet")
                figures = _run_child(settings, way, n_parts, users, out)
                frames[way] = pl.read_parquet(out)
                parts = 1 if way == "one_pass" else n_parts
                line = {"way": way, "round": round_, "rows": rows, "parts": parts, **figures}
                line["load_1min"] = round(os.getloadavg()[0], 2)
                print(json.dumps(line, sort_keys=True), flush=True)
    first, *others = frames.values()
    for other in others:
        assert_frame_equal(first, other)
    print(json.dumps({"equal": list(frames)}), flush=True)


if __name__ == "__main__":
    main()
