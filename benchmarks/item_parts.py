"""Per-item statistics over every line, in one pass vs in parts of whole items (issue #17).

Out of core, ``recsys nightly-batch`` computes two per-item tables over every transaction:
the prefilter's item statistics (buyers, median unit price) and the shards' item features
(``i_*``). One streaming pass holds every item's buyer set and prices at once; in parts
(``scale.in_memory_rows`` lines each) one part at a time. Each measurement runs in a child
process, so each peak is its own; the tables of both ways are compared (they must be equal).

Run: ``python benchmarks/item_parts.py --source synthetic --path DIR/100x [--parts 7]
[--tables prefilter,item_table]`` (``--parts`` 0: as the nightly chooses, one per
``scale.in_memory_rows`` lines). The item table is computed on the nightly's catalogue,
which the parent computes once, in parts, before the children start.
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
from recsys_batch.model.item_features import item_table_in_parts
from recsys_batch.model.prefilter import apply_catalogue, item_stats_in_parts, prefilter
from recsys_batch.model.split import production_windows, week_range


def _measure(settings: Settings, table: str, n_parts: int, out: str) -> None:
    """Child process: compute one table, write it to ``out`` with its wall and peak."""
    tx = load_dataset(settings.data).transactions
    started = time.perf_counter()
    if table == "prefilter":
        frame = item_stats_in_parts(tx, n_parts).collect().sort("item_id")
    else:
        catalogue = pl.read_parquet(Path(out).with_name(CATALOGUE))
        tx_cat = apply_catalogue(tx, catalogue.lazy(), settings.prefilter)
        cut = production_windows(*week_range(tx), settings.split).target_end
        frame = item_table_in_parts(
            tx_cat,
            cut,
            settings.features,
            n_parts,
            placeholder_item=settings.prefilter.placeholder_item,
        )
    seconds = time.perf_counter() - started
    frame.write_parquet(out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out + ".json").write_text(json.dumps({"seconds": seconds, "peak_mib": peak}))


CATALOGUE = "catalogue.parquet"
"""The nightly's catalogue, computed once by the parent for the item-table children."""


def _write_catalogue(settings: Settings, n_parts: int, folder: Path) -> None:
    dataset = load_dataset(settings.data)
    stats = item_stats_in_parts(dataset.transactions, n_parts)
    result = prefilter(dataset.transactions, dataset.items, settings.prefilter, stats)
    result.catalogue.collect(engine="streaming").write_parquet(folder / CATALOGUE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="completejourney")
    parser.add_argument("--path", default=None)
    parser.add_argument("--parts", type=int, default=0)
    parser.add_argument("--tables", default="prefilter,item_table")
    args = parser.parse_args()
    settings = load_settings(data={"source": args.source, "path": args.path})
    rows = load_dataset(settings.data).transactions.select(pl.len()).collect().item()
    n_parts = args.parts or max(1, -(-rows // settings.scale.in_memory_rows))
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as work:
        _write_catalogue(settings, n_parts, Path(work))
        for table in args.tables.split(","):
            frames = {}
            for parts in (1, n_parts):
                out = str(Path(work) / f"{table}-{parts}.parquet")
                child = spawn.Process(target=_measure, args=(settings, table, parts, out))
                child.start()
                child.join()
                if child.exitcode != 0:
                    raise SystemExit(f"{table} in {parts} part(s) failed: exit {child.exitcode}")
                figures = json.loads(Path(out + ".json").read_text())
                frames[parts] = pl.read_parquet(out)
                print(
                    json.dumps(
                        {"table": table, "rows": rows, "parts": parts, **figures}, sort_keys=True
                    ),
                    flush=True,
                )
            assert_frame_equal(frames[1], frames[n_parts])
            print(json.dumps({"table": table, "equal": True}), flush=True)


if __name__ == "__main__":
    main()
