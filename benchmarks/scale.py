"""Cost curve of the sharded nightly batch at 1x, 10x and 100x synthetic data (issue #8).

One run = the memory-bounded batch on one ``recsys data synth`` folder::

    .venv/bin/python benchmarks/scale.py --data /tmp/synth_2500 --label 1x
    .venv/bin/python benchmarks/scale.py --data /tmp/synth_25000 --label 10x --executor dask

Stages (wall seconds each, printed and written as JSON with ``--out``):

prefilter  catalogue from a lazy scan of the parquet parts (streaming engine)
split      catalogue applied, transactions written to one parquet folder per user shard
           (stable hash of user_id), in one streaming pass
train      two-stage training (stage 1 on history, LightGBM on the stage-2 window) on at
           most ``--train-users`` users, a stable hash sample; negatives sampled per user
refit      stage 1 refit on every user for scoring (skipped when the sample is everyone)
context    item features over all users and the reference day, once, on the driver
shards     per shard: read its parquet, candidates, features, LightGBM, top 5, write into
           the new Redis version and count its keys (local loop or Dask LocalCluster)
finish     popular list, item attributes, verification, the one pointer flip

Peak memory is the largest resident set of this process (workers of a ``processes=False``
LocalCluster are threads in it) sampled every 0.2 s, and ``ru_maxrss``. A throwaway
redis-server is started unless ``--redis-url`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_batch.config import Settings, load_settings  # noqa: E402
from recsys_batch.data import columns as C  # noqa: E402
from recsys_batch.data.sources import load_dataset  # noqa: E402
from recsys_batch.model import split, two_stage  # noqa: E402
from recsys_batch.model.prefilter import apply_catalogue, prefilter  # noqa: E402
from recsys_batch.publish import store  # noqa: E402
from recsys_batch.run import dask_executor as D  # noqa: E402
from recsys_batch.run import executors as E  # noqa: E402
from recsys_batch.run import shard_context, sharding  # noqa: E402

log = logging.getLogger("scale")


class PeakRss:
    """Largest RSS of this process and its children, sampled in a daemon thread."""

    def __init__(self, every: float = 0.2) -> None:
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                if child.name().startswith("redis"):
                    continue  # the server is not the batch
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


@contextmanager
def stage(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - started, 2)
    rss = psutil.Process().memory_info().rss / 2**20
    log.info("stage %-9s %8.1fs  rss %6.0f MiB", name, timings[name], rss)


def bench_settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        data={"source": "synthetic", "path": str(args.data)},
        # One thread each: on a shared 2-core machine OpenMP barriers thrash (20x slower).
        ranker={
            "negatives_per_user": args.negatives,
            "threads": args.threads,
            "n_estimators": args.trees,
            "learning_rate": args.learning_rate,
        },
        candidates={"als": {"threads": args.threads}, "max_per_user": args.max_candidates},
        scale={
            "shard_users": args.shard_users,
            "executor": args.executor.split(",")[0],
            "train_users": args.train_users,
        },
        redis={"url": args.redis_url, "key_prefix": f"scale{args.label}"},
    )


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = bench_settings(args)
    timings: dict[str, float] = {}
    dataset = load_dataset(settings.data)
    scan = dataset.transactions
    items = dataset.items.collect() if dataset.items is not None else None
    users_table = dataset.users.collect() if dataset.users is not None else None

    with stage(timings, "prefilter"):
        catalogue = prefilter(scan, dataset.items, settings.prefilter).catalogue.collect(
            engine="streaming"
        )
        counts = scan.select(
            pl.col(C.USER).n_unique().alias("users"),
            pl.len().alias("rows"),
            pl.col(C.WEEK).min().alias("first"),
            pl.col(C.WEEK).max().alias("last"),
        ).collect(engine="streaming")
    n_users, n_rows, first_week, last_week = counts.row(0)
    n_shards = sharding.shard_count(n_users, settings.scale.shard_users)

    shards_dir = workdir / "shards"
    with stage(timings, "split"):
        tx_cat = apply_catalogue(scan, catalogue.lazy(), settings.prefilter)
        sharding.write_shards(tx_cat, n_shards, shards_dir)
    tx = pl.scan_parquet(shards_dir / "*" / "*.parquet", hive_partitioning=False)
    windows = split.production_windows(first_week, last_week, settings.split)

    with stage(timings, "train"):
        sample = sharding.sample_users(tx, n_users, settings.scale.train_users)
        data = two_stage.ModelData(
            tx,
            catalogue.lazy(),
            items.lazy() if items is not None else None,
            users_table.lazy() if users_table is not None else None,
        )
        model = two_stage.train_two_stage(data.with_transactions(sample), windows, settings)
    if sample is not tx:
        with stage(timings, "refit"):
            model.stage1_for_scoring = two_stage.fit_scoring_stage1(data, windows, settings)

    with stage(timings, "context"):
        ctx = shard_context.build_context(model, data, settings, n_shards, shards_dir=shards_dir)
        popular = two_stage.popular_fallback(tx, catalogue.lazy(), settings.ranker.top_k)

    client = store.connect(settings.redis)
    user_ids = tx.select(C.USER).unique()
    runs: dict[str, dict[str, Any]] = {}
    published_users = 0
    for name in args.executor.split(","):
        executor = (
            D.DaskExecutor(None, settings.scale.dask_workers, settings.scale.shard_retries)
            if name == "dask"
            else E.LocalExecutor(settings.scale.shard_retries)
        )
        published = E.publish_shards(
            ctx, user_ids, executor, client, popular, {"run_id": f"scale-{args.label}-{name}"}
        )
        published_users = published.users
        per_shard: dict[str, float] = {}
        for result in published.results:
            for key, value in result.seconds.items():
                per_shard[key] = round(per_shard.get(key, 0.0) + value, 2)
        runs[name] = {
            "version": published.version,
            "shards": round(published.seconds["shards"], 2),
            "finish": round(published.seconds["finish"], 2),
            "shard_seconds_summed": per_shard,
            "max_shard_peak_rss_mib": round(max(r.peak_memory_mb for r in published.results)),
        }
        log.info("executor %s: %s", name, runs[name])
    first = runs[args.executor.split(",")[0]]
    timings["shards"] = first["shards"]
    timings["finish"] = first["finish"]
    total = round(sum(timings.values()), 2)
    return {
        "label": args.label,
        "data": str(args.data),
        "users": n_users,
        "published_users": published_users,
        "rows": n_rows,
        "catalogue_items": catalogue.height,
        "shards": n_shards,
        "shard_users": settings.scale.shard_users,
        "train_users": settings.scale.train_users,
        "train_rows": model.train_rows,
        "negatives_per_user": settings.ranker.negatives_per_user,
        "threads": args.threads,
        "trees": args.trees,
        "learning_rate": args.learning_rate,
        "max_candidates": args.max_candidates,
        "executor": args.executor,
        "executors": runs,
        "seconds": timings,
        "train_breakdown": {k: round(v, 2) for k, v in model.timings.items()},
        "total_seconds": total,
        "seconds_per_1000_users": round(total / n_users * 1000, 3),
        "scoring_seconds_per_1000_users": round(
            (timings["shards"] + timings["finish"]) / n_users * 1000, 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="recsys data synth folder")
    parser.add_argument("--label", default="run")
    parser.add_argument(
        "--executor",
        choices=["local", "dask", "local,dask", "dask,local"],
        default="local",
        help="comma-separated: score and publish the same model with each, in turn",
    )
    parser.add_argument("--shard-users", type=int, default=5_000)
    parser.add_argument("--train-users", type=int, default=25_000)
    parser.add_argument(
        "--negatives", type=int, default=None, help="negatives per user (default: all)"
    )
    parser.add_argument("--trees", type=int, default=100, help="LightGBM n_estimators")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--max-candidates", type=int, default=100, help="stage-1 union cap")
    parser.add_argument("--threads", type=int, default=1, help="LightGBM and ALS threads")
    parser.add_argument("--redis-url", default=None, help="default: a throwaway redis-server")
    parser.add_argument("--out", type=Path, default=None, help="append the JSON line here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    with tempfile.TemporaryDirectory(prefix="recsys-scale-") as tmp:
        workdir = Path(tmp)
        server = None
        if args.redis_url is None:
            from tests.conftest import start_redis_server  # noqa: PLC0415

            (workdir / "redis").mkdir()
            server, port = start_redis_server(workdir / "redis")
            args.redis_url = f"redis://127.0.0.1:{port}/0"
        try:
            with PeakRss() as peak:
                started = time.perf_counter()
                result = run(args, workdir)
                result["wall_seconds"] = round(time.perf_counter() - started, 2)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=10)
    result["peak_rss_mib"] = round(peak.peak / 2**20)
    result["ru_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["machine"] = {
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "polars": pl.__version__,
        "shared": "2 cores shared with other helpers working concurrently",
    }
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        with args.out.open("a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
