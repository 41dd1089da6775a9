"""Redis memory per user of a published version (issue #18): MEMORY USAGE of the user keys.

Usage::

    .venv/bin/python benchmarks/redis_memory.py                  # throwaway redis-server
    .venv/bin/python benchmarks/redis_memory.py --url redis://127.0.0.1:6379/0 --top-n 5 20

For each ``--top-n`` N, the bundled data's households (completejourney, 2,469 users) are
published through the batch's own path (:func:`tests.publishing.publish_lists`: begin,
``writer.write_users``, verify, flip) with their N most-bought items (real item ids, ties by
id) and one reason per item (``repeat``: distinct days bought, days since the last purchase,
as the nightly run stores it). Then ``MEMORY USAGE key SAMPLES 0`` is summed over every key
that holds users (the ``u``, ``t`` and ``r`` bucket hashes) and divided by the users; the
items alone (``u`` + ``t``) and the reasons (``r``) are reported too, with the encoding of
the bucket hashes (``listpack`` expected).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import polars as pl
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_batch.config import DataConfig, RedisConfig  # noqa: E402
from recsys_batch.data import columns as C  # noqa: E402
from recsys_batch.data.sources import load_dataset  # noqa: E402
from recsys_batch.publish import keys, status, versions  # noqa: E402
from tests.conftest import start_redis_server  # noqa: E402
from tests.publishing import publish_lists  # noqa: E402


def bundled_lists(top_n: int) -> pl.DataFrame:
    """Each bundled user's ``top_n`` most-bought items with a repeat reason (``RECOMMENDATIONS``
    + ``reason``)."""
    tx = load_dataset(DataConfig()).transactions
    last_day = tx.select(pl.col(C.DAY).max()).collect().item()
    bought = (
        tx.group_by(C.USER, C.ITEM)
        .agg(
            pl.col(C.DAY).n_unique().alias("times"),
            (last_day - pl.col(C.DAY).max()).alias("since"),
        )
        .sort([C.USER, "times", C.ITEM], descending=[False, True, False])
        .group_by(C.USER, maintain_order=True)
        .head(top_n)
    )
    return (
        bought.with_columns(
            pl.int_range(1, pl.len() + 1).over(C.USER).cast(pl.Int32).alias(C.RANK),
            pl.lit(1.0).alias(C.SCORE),
            pl.format("r{}.{}", "times", "since").alias("reason"),
        )
        .select(C.USER, C.ITEM, C.RANK, C.SCORE, "reason")
        .collect()
    )


def measure(client: redis.Redis, cfg: RedisConfig, top_n: int) -> dict[str, object]:
    recs = bundled_lists(top_n)
    version = publish_lists(client, recs, [1, 2, 3], None, cfg)
    buckets = status.version_buckets(client, version, cfg)
    users = recs[C.USER].n_unique()
    sizes: dict[str, int] = {}
    encodings: set[str] = set()
    for family in keys.USER_FAMILIES:
        total = 0
        for bucket in range(buckets):
            name = keys.user_bucket_key(version, bucket, cfg.key_prefix, family)
            used = client.memory_usage(name, samples=0)
            if used:
                total += int(used)
                encodings.add(client.object("encoding", name).decode())
        sizes[family] = total
    items_bytes = sizes["u"] + sizes["t"]
    return {
        "top_n": top_n,
        "users": users,
        "buckets": buckets,
        "encodings": sorted(encodings),
        "bytes_per_user_items": round(items_bytes / users, 1),
        "bytes_per_user_reasons": round(sizes["r"] / users, 1),
        "bytes_per_user_total": round((items_bytes + sizes["r"]) / users, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis to use (default: start a throwaway server)")
    parser.add_argument("--top-n", type=int, nargs="+", default=[5, 20])
    args = parser.parse_args()
    proc = None
    if args.url:
        url = args.url
    else:
        proc, port = start_redis_server(Path(tempfile.mkdtemp(prefix="mem-redis-")))
        url = f"redis://127.0.0.1:{port}/0"
    cfg = RedisConfig(url=url, key_prefix="memb")
    client = redis.Redis.from_url(url)
    try:
        rows = [measure(client, cfg, n) for n in args.top_n]
        info = client.info("server")
        for version in status.all_versions(client, cfg):
            versions.unlink_version(client, version, cfg)
        client.delete(keys.current_key("memb"), keys.previous_key("memb"))
    finally:
        client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    print(json.dumps({"redis_version": info.get("redis_version"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
