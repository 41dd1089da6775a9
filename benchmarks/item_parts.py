"""The prefilter's per-item statistics over every line, in one pass vs in parts of whole
items (issue #17).

Out of core, ``recsys nightly-batch`` computes the prefilter's item statistics (buyers,
median unit price) over every raw transaction. One streaming pass holds every item's buyer
set and prices at once; in parts (``scale.in_memory_rows`` lines each) one part at a time.
Each measurement runs in a child process, so each peak is its own; the tables of both ways
are compared (they must be equal). (The shards' item features are computed from the shard
files, one part of whole users at a time: ``benchmarks/shard_profile.py`` times them.)

Run: ``python benchmarks/item_parts.py --source synthetic --path DIR/100x [--parts 7]``
(``--parts`` 0: as the nightly chooses, one per ``scale.in_memory_rows`` lines).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from recsys_batch.config import Settings, load_settings
from recsys_batch.data.sources import load_dataset
from recsys_batch.model.prefilter import item_stats_in_parts


def _measure(settings: Settings, n_parts: int, out: str) -> None:
    """Child process: compute the table, write it to ``out`` with its wall and peak."""
    tx = load_dataset(settings.data).transactions
    started = time.perf_counter()
    frame = item_stats_in_parts(tx, n_parts).collect().sort("item_id")
    seconds = time.perf_counter() - started
    frame.write_parquet(out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out + ".json").write_text(json.dumps({"seconds": seconds, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="completejourney")
    parser.add_argument("--path", default=None)
    parser.add_argument("--parts", type=int, default=0)
    args = parser.parse_args()
    settings = load_settings(data={"source": args.source, "path": args.path})
    rows = load_dataset(settings.data).transactions.select(pl.len()).collect().item()
    n_parts = args.parts or max(1, -(-rows // settings.scale.in_memory_rows))
    spawn = multiprocessing.get_context("spawn")
    frames = {}
    with tempfile.TemporaryDirectory() as work:
        for parts in (1, n_parts):
            out = str(Path(work) / f"prefilter-{parts}.parquet")
            child = spawn.Process(target=_measure, args=(settings, parts, out))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(
                    f"prefilter statistics in {parts} part(s) failed: {child.exitcode}"
                )
            figures = json.loads(Path(out + ".json").read_text())
            frames[parts] = pl.read_parquet(out)
            print(json.dumps({"rows": rows, "parts": parts, **figures}, sort_keys=True), flush=True)
    assert_frame_equal(frames[1], frames[n_parts])
    print(json.dumps({"equal": True}), flush=True)


if __name__ == "__main__":
    main()
