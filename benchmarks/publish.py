"""Publish throughput against ``redis-benchmark -t set -P 16`` on the same server (issue #5).

Usage::

    .venv/bin/python benchmarks/versions.py                 # starts a throwaway redis-server
    .venv/bin/python benchmarks/versions.py --url redis://127.0.0.1:6379/0 --users 1000000

One run measures, on the same server and machine:

1. ``redis-benchmark -t set -P 16 -n N -q`` (SET requests per second, its defaults otherwise);
2. ``publish_version`` of ``--users`` users x 5 items, ``--repeat`` times in a row (steady
   state: from the third publish on, every publish also unlinks the oldest version). Reported
   in users per second, median over the repeats: the user-write phase (SETs only), "to live"
   (encode + write + verify + flip: when the new version starts serving) and the whole call
   (also the cleanup of the oldest version, which happens after the flip).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_batch.config import RedisConfig  # noqa: E402
from recsys_batch.publish import store, versions  # noqa: E402
from tests.conftest import start_redis_server  # noqa: E402


def recommendations(users: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "user_id": np.repeat(np.arange(1, users + 1, dtype=np.int64), 5),
            "item_id": rng.integers(100_000, 20_000_000, size=users * 5),
            "rank": np.tile(np.arange(1, 6, dtype=np.int32), users),
            "score": np.ones(users * 5, dtype=np.float32),
        }
    )


def redis_benchmark(host: str, port: int, requests: int) -> float:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        msg = "redis-benchmark not found on PATH"
        raise SystemExit(msg)
    out = subprocess.run(
        [binary, "-h", host, "-p", str(port), "-t", "set", "-P", "16", "-n", str(requests), "-q"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.findall(r"SET: ([0-9.]+) requests per second", out)
    if not match:
        msg = f"cannot parse redis-benchmark output: {out!r}"
        raise SystemExit(msg)
    return float(match[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis to use (default: start a throwaway server)")
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2_000_000)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()

    proc = None
    if args.url:
        url = args.url
    else:
        proc, port = start_redis_server(Path(tempfile.mkdtemp(prefix="bench-redis-")))
        url = f"redis://127.0.0.1:{port}/0"
    try:
        kwargs = redis.Redis.from_url(url).connection_pool.connection_kwargs
        host, port = kwargs["host"], int(kwargs.get("port", 6379))
        cfg = RedisConfig(url=url, key_prefix="bench", chunk_size=args.chunk_size)
        client = store.connect(cfg)
        set_rps = redis_benchmark(host, port, args.requests)
        client.delete("key:__rand_int__")
        recs = recommendations(args.users)
        total, writes, live = [], [], []
        flip = versions.flip_pointer
        flipped: list[float] = []

        def timed_flip(*a: object, **k: object) -> object:
            result = flip(*a, **k)  # type: ignore[arg-type]
            flipped.append(time.perf_counter())
            return result

        versions.flip_pointer = timed_flip  # type: ignore[assignment]
        for _ in range(args.repeat):
            started = time.perf_counter()
            version = versions.publish_version(client, recs, [1, 2, 3, 4, 5], None, {}, cfg)
            total.append(time.perf_counter() - started)
            live.append(flipped[-1] - started)
            meta = versions.version_info(client, version, cfg).meta
            writes.append(float(meta["write_seconds"]))
        set_rps_after = redis_benchmark(host, port, args.requests)
        for version in versions.all_versions(client, cfg):
            versions.unlink_version(client, version, cfg)
        client.delete("bench:current", "bench:previous", "key:__rand_int__")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)

    baseline = statistics.median([set_rps, set_rps_after])
    write_ups = args.users / statistics.median(writes)
    total_ups = args.users / statistics.median(total)
    live_ups = args.users / statistics.median(live)
    result = {
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "redis": "throwaway redis-server" if proc else store.mask_url(url),
        "users": args.users,
        "repeat": args.repeat,
        "chunk_size": args.chunk_size,
        "redis_benchmark_set_rps": round(baseline),
        "redis_benchmark_runs": [round(set_rps), round(set_rps_after)],
        "write_phase_users_per_s": round(write_ups),
        "to_live_users_per_s": round(live_ups),
        "publish_users_per_s": round(total_ups),
        "write_phase_ratio": round(write_ups / baseline, 3),
        "to_live_ratio": round(live_ups / baseline, 3),
        "publish_ratio": round(total_ups / baseline, 3),
        "to_live_seconds": [round(t, 3) for t in live],
        "publish_seconds": [round(t, 3) for t in total],
        "write_seconds": writes,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(json.dumps(result, indent=2))
    print(
        f"\nredis-benchmark SET -P 16: {baseline:,.0f}/s | user writes: {write_ups:,.0f} users/s "
        f"({write_ups / baseline:.0%}) | to live: {live_ups:,.0f} users/s "
        f"({live_ups / baseline:.0%}) | whole call: {total_ups:,.0f} users/s "
        f"({total_ups / baseline:.0%})"
    )


if __name__ == "__main__":
    main()
