"""The cost of one shard's task (candidates, features, scores, top k) on big data (issue #17).

A shard of the nightly batch is scored by :func:`recsys_batch.run.shard_task.run_shard`
with a trained model and the context the driver builds once. This benchmark rebuilds that
context for a few shards only, from a finished run's models folder, and times the shards
(score only, no Redis), so a change to the shard path can be measured and its output
compared in minutes instead of a whole night::

    PYTHONPATH=. python benchmarks/shard_profile.py --source synthetic --path DIR/100x \\
        --models RUNS/<run_id>/models --work DIR/shard-work --shards 0,1,2 \\
        --out DIR/recs-after.parquet [--compare DIR/recs-before.parquet]

The first call caches the catalogue, the shard files (as the nightly writes them), the
item table (over every shard file, as the nightly computes it) and the reference row under
``--work``; later calls reuse them. ``--compare``: the recommendations must equal those of
an earlier call (same shards), else the exit code is 1. Run it under ``pyinstrument`` for
the profile.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from recsys_batch.config import Settings, load_settings
from recsys_batch.data import columns as C
from recsys_batch.data.frames import distinct_count
from recsys_batch.data.sources import load_dataset
from recsys_batch.model import persist, plan_features, split
from recsys_batch.model.prefilter import apply_catalogue, item_stats_in_parts, prefilter
from recsys_batch.run import shard_context, shard_task, sharding


def _cached(path: Path, make) -> pl.DataFrame:  # noqa: ANN001 - a zero-argument callable
    if not path.exists():
        started = time.perf_counter()
        make().write_parquet(path)
        print(f"cached {path.name} in {time.perf_counter() - started:.1f}s", flush=True)
    return pl.read_parquet(path)


def build(settings: Settings, models: Path, work: Path, shards: list[int]) -> tuple:
    """The shard context of a finished run's model, for ``shards`` only, and the shard count."""
    work.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(settings.data)
    tx = dataset.transactions
    model = persist.load_model(models)
    rows = tx.select(pl.len()).collect(engine="streaming").item()
    n_parts = max(1, -(-rows // settings.scale.in_memory_rows))
    catalogue = _cached(
        work / "catalogue.parquet",
        lambda: prefilter(
            tx,
            dataset.items,
            settings.prefilter,
            item_stats_in_parts(tx, n_parts, folder=work / "item_parts"),
        ).catalogue.collect(engine="streaming"),
    )
    users = distinct_count(tx, C.USER, "n").collect(engine="streaming").item()
    n_shards = sharding.shard_count(users, settings.scale.shard_users)
    shards_dir = work / "shards"
    if not shards_dir.exists():  # as the nightly's prefilter stage writes them
        started = time.perf_counter()
        tx_cat = apply_catalogue(tx, catalogue.lazy(), settings.prefilter)
        sharding.write_shards(tx_cat, n_shards, shards_dir)
        print(f"wrote the shard files in {time.perf_counter() - started:.1f}s", flush=True)
    cut = model.windows.target_end
    parts = [
        split.before_test(sharding.scan_shard(shards_dir, s), model.windows)
        for s in range(n_shards)
    ]
    item_table = _cached(
        work / "item_table.parquet",
        lambda: shard_context.global_item_table(parts, cut, settings),
    )
    reference = _cached(
        work / "reference.parquet", lambda: shard_context.reference_rows(pl.concat(parts), cut)
    )
    partitions = {shard: parts[shard].collect() for shard in shards}
    plans = None  # as the nightly's _model_data: the plan tables of the weeks it scores
    if model.forward_plan_features:
        windows = model.windows
        horizons = plan_features.model_horizons(windows.history_end, cut, settings.split)
        plans = plan_features.plan_tables(dataset.plans, catalogue.lazy().select(C.ITEM), horizons)
    context = shard_task.ShardContext(
        model=model,
        catalogue_items=catalogue.select(C.ITEM)
        .filter(pl.col(C.ITEM) != settings.prefilter.placeholder_item)
        .unique(),
        item_table=item_table,
        reference_rows=reference,
        settings=settings,
        n_shards=n_shards,
        side_tables=shard_context.side_tables(dataset.items, dataset.users, settings),
        items=dataset.items.collect() if dataset.items is not None else None,
        users=dataset.users.collect() if dataset.users is not None else None,
        partitions=partitions,
        plans=plans,
        first_buyers=shard_context.new_item_families(parts, cut, settings),
    )
    return context, n_shards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--path", required=True)
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--shards", default="0,1,2")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", type=Path)
    parser.add_argument(
        "--threads", type=int, default=1, help="shards scored at once, in threads of this process"
    )
    args = parser.parse_args()
    settings = load_settings(None, data={"source": args.source, "path": args.path})
    shards = [int(s) for s in args.shards.split(",")]
    context, n_shards = build(settings, args.models, args.work, shards)

    def one(shard: int) -> tuple[dict[str, float], pl.DataFrame | None]:
        user_ids = context.partitions[shard].select(C.USER).unique().sort(C.USER)
        started = time.perf_counter()
        result = shard_task.run_shard(context, shard, user_ids)
        row = {
            "shard": shard,
            "users": result.users,
            "wall": round(time.perf_counter() - started, 3),
        }
        row.update({k: round(v, 3) for k, v in result.seconds.items()})
        print(json.dumps(row), flush=True)
        return row, result.recommendations

    started, cpu, usage = time.perf_counter(), time.process_time(), resource.getrusage(0)
    with ThreadPoolExecutor(args.threads) as pool:
        done = list(pool.map(one, shards))
    wall = time.perf_counter() - started
    cores = (time.process_time() - cpu) / wall
    after = resource.getrusage(0)
    system, faults = after.ru_stime - usage.ru_stime, after.ru_minflt - usage.ru_minflt
    results = [recs for _, recs in done if recs is not None]
    print(
        f"{len(shards)} shards in {wall:.1f}s ({wall / len(shards):.2f}s each, {cores:.2f} cores "
        f"busy, {args.threads} at once; {system:.1f}s system time, {faults} page faults); "
        f"{n_shards} shards in the run"
    )
    recs = pl.concat(results).sort(C.USER, "rank") if "rank" in results[0].columns else None
    recs = recs if recs is not None else pl.concat(results).sort(C.USER, C.ITEM)
    if args.out:
        recs.write_parquet(args.out)
    if args.compare:
        try:
            assert_frame_equal(recs, pl.read_parquet(args.compare))
        except AssertionError as exc:
            print(f"recommendations differ from {args.compare}: {exc}", file=sys.stderr)
            return 1
        print(f"recommendations equal to {args.compare}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
