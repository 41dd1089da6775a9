"""Publish throughput against ``redis-benchmark -t set -P 16`` on the same server (issue #5).

Usage::

    .venv/bin/python benchmarks/publish.py                 # starts a throwaway redis-server
    .venv/bin/python benchmarks/publish.py --url redis://127.0.0.1:6379/0 --users 1000000

One run measures, on the same server and machine:

1. ``redis-benchmark -t set -P 16 -n N -q`` (SET requests per second, its defaults otherwise);
2. ``--users`` users x 5 items published ``--repeat`` times in a row the way a one-shard
   nightly run publishes them (:func:`tests.publishing.publish_lists`: ``begin_version``,
   ``writer.write_users``, ``finish_version``; steady state: from the third publish on, every
   publish also unlinks the oldest version). Reported in users per second, median over the
   repeats: the user-write phase (``write_users``: ``HSET`` of many fields per bucket hash,
   ``EXPIRE``, pipelined through redis-py, and the ``HMGET`` count-back; format 2, #18),
   "to live" (begin + write + verify + flip: when the new version starts serving) and the
   whole call (also the cleanup of the oldest version, which happens after the flip).
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import polars as pl
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_batch.config import RedisConfig  # noqa: E402
from recsys_batch.publish import status, store, versions, writer  # noqa: E402
from tests.conftest import start_redis_server  # noqa: E402
from tests.publishing import publish_lists  # noqa: E402

Span = tuple[float, float]
"""``time.perf_counter()`` at the start and at the end of one call."""


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


@contextmanager
def timed(module: ModuleType, name: str, spans: list[Span]) -> Iterator[None]:
    """Record the span of every call to ``module.name`` made inside the block.

    The shipped functions are timed where they are looked up, so the publish measured is
    exactly the one :func:`publish_lists` (and the nightly run) performs.
    """
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spans.append((started, time.perf_counter()))

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


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
        total: list[float] = []
        live: list[float] = []
        write_spans: list[Span] = []
        flip_spans: list[Span] = []
        with (
            timed(writer, "write_users", write_spans),
            timed(versions, "flip_pointer", flip_spans),
        ):
            for _ in range(args.repeat):
                started = time.perf_counter()
                publish_lists(client, recs, [1, 2, 3, 4, 5], None, cfg)
                total.append(time.perf_counter() - started)
                live.append(flip_spans[-1][1] - started)
        writes = [end - start for start, end in write_spans]
        set_rps_after = redis_benchmark(host, port, args.requests)
        for version in status.all_versions(client, cfg):
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
        "write_seconds": [round(t, 3) for t in writes],
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
