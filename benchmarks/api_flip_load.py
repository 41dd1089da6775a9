"""The API under load while the batch publishes new versions (issue #7).

Starts a throwaway redis-server (or uses ``--redis-url``), publishes version 1 the way the
nightly batch does (:func:`tests.publishing.publish_lists`: ``--users`` users x 5 items),
serves the API with uvicorn in a subprocess (uvloop, httptools, ``--workers``), then for
``--duration`` seconds:

- ``--clients`` threads send keep-alive requests as fast as they can: 70% ``GET`` of one
  user (known, or unknown -> fallback), 30% ``POST`` batches of 20 known users + 1 unknown;
- a publisher thread writes and flips a new version every ``--flip-interval`` seconds, with
  the real cleanup of every version but the live and the previous one.

Every item of version ``m`` encodes ``m`` (``m * 10**8 + user * 10 + j``), so each answer is
checked: exactly the items of one version for that user, the version it names, fallback only
for the unknown user. Reports requests, throughput, latency percentiles, 5xx, other errors and
wrong answers. Usage::

    .venv/bin/python benchmarks/api_flip_load.py --duration 30 --out /tmp/flip.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_batch.config import RedisConfig  # noqa: E402
from recsys_batch.publish import status, versions  # noqa: E402
from tests.publishing import publish_lists  # noqa: E402

UNKNOWN = 10_000_000
MARK = 100_000_000  # item ids of version m: m * MARK + user * 10 + j (users < 10**7)


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def marked_recs(marker: int, users: int) -> pl.DataFrame:
    ids = np.arange(1, users + 1, dtype=np.int64)
    items = marker * MARK + np.repeat(ids, 5) * 10 + np.tile(np.arange(5), users)
    return pl.DataFrame(
        {
            "user_id": np.repeat(ids, 5),
            "item_id": items.astype(np.int64),
            "rank": np.tile(np.arange(1, 6, dtype=np.int32), users),
            "score": np.ones(users * 5, dtype=np.float32),
        }
    )


def marked_popular(marker: int) -> list[int]:
    return [marker * MARK + MARK - 10 + j for j in range(5)]


def expected(marker: int, user: int) -> list[int]:
    if user == UNKNOWN:
        return marked_popular(marker)
    return [marker * MARK + user * 10 + j for j in range(5)]


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tempfile.mkdtemp()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    msg = f"nothing listens on port {port}"
    raise RuntimeError(msg)


def serve(port: int, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--loop", "uvloop",
               "--http", "httptools", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    wait_port(port)
    return proc


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.wrong: list[str] = []
        self.version_markers: dict[str, set[int]] = {}
        self.checked = 0

    def record(self, took: float, status: int) -> None:
        with self.lock:
            self.latencies.append(took)
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def check(self, version: str, user: int, items: list[int], source: str) -> None:
        marker = items[0] // MARK if items else -1
        problem = items != expected(marker, user) or (source == "fallback") != (user == UNKNOWN)
        with self.lock:
            self.checked += 1
            self.version_markers.setdefault(version, set()).add(marker)
            if problem and len(self.wrong) < 20:
                self.wrong.append(f"{version} user {user}: {items} ({source})")
            elif problem:
                self.wrong.append("...")


def client_loop(port: int, users: int, seed: int, stop: threading.Event, stats: Stats) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        if rng.random() < 0.7:
            user = rng.choice([rng.randint(1, users)] * 9 + [UNKNOWN])
            started = time.perf_counter()
            conn.request("GET", f"/v1/recommendations/{user}")
            resp = conn.getresponse()
            data = resp.read()
            stats.record(time.perf_counter() - started, resp.status)
            if resp.status == 200:
                body = json.loads(data)
                stats.check(body["version"], user, body["items"], body["source"])
        else:
            ids = [rng.randint(1, users) for _ in range(20)] + [UNKNOWN]
            payload = json.dumps({"user_ids": ids})
            started = time.perf_counter()
            conn.request(
                "POST", "/v1/recommendations", payload, {"content-type": "application/json"}
            )
            resp = conn.getresponse()
            data = resp.read()
            stats.record(time.perf_counter() - started, resp.status)
            if resp.status == 200:
                body = json.loads(data)
                for result in body["results"]:
                    stats.check(body["version"], result["user_id"], result["items"],
                                result["source"])  # fmt: skip
    conn.close()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q) * 1000) if values else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--redis-url", default=None, help="default: a throwaway redis-server")
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--flip-interval", type=float, default=2.0, help="seconds")
    parser.add_argument("--clients", type=int, default=8, help="client threads")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument("--cache-seconds", type=float, default=1.0, help="API pointer cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    redis_proc = None
    url = args.redis_url
    if url is None:
        redis_proc, url = start_redis()
    prefix = f"flip{uuid.uuid4().hex[:8]}"
    cfg = RedisConfig(url=url, key_prefix=prefix, ttl_days=1)
    client = redis.Redis.from_url(url)
    markers: dict[str, int] = {}
    publish_seconds: list[float] = []

    def publish_marker(marker: int) -> None:
        started = time.perf_counter()
        recs = marked_recs(marker, args.users)
        version = publish_lists(client, recs, marked_popular(marker), None, cfg)
        publish_seconds.append(time.perf_counter() - started)
        markers[version] = marker

    publish_marker(1)
    port = free_port()
    env = {
        "RECSYS_REDIS__URL": url,
        "RECSYS_REDIS__KEY_PREFIX": prefix,
        "RECSYS_API__CURRENT_CACHE_SECONDS": str(args.cache_seconds),
    }
    api = serve(port, args.workers, env)
    stats = Stats()
    stop = threading.Event()
    try:
        # Warm up: the pointer is cached and every worker is up.
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/readyz")
            conn.getresponse().read()
            conn.close()
        threads = [
            threading.Thread(target=client_loop, args=(port, args.users, n, stop, stats))
            for n in range(args.clients)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        marker = 1
        while time.monotonic() - started < args.duration - args.flip_interval:
            time.sleep(args.flip_interval)
            marker += 1
            publish_marker(marker)
        time.sleep(max(0.0, args.duration - (time.monotonic() - started)))
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        api.terminate()
        api.wait(timeout=30)
        for version in status.all_versions(client, cfg):
            versions.unlink_version(client, version, cfg)
        client.delete(f"{prefix}:current", f"{prefix}:previous", f"{prefix}:versions")
        client.close()
        if redis_proc is not None:
            redis_proc.kill()

    mislabelled = sorted(
        v for v, seen in stats.version_markers.items() if seen != {markers.get(v, -1)}
    )
    requests = len(stats.latencies)
    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.python_version()}",
        "users": args.users,
        "duration_s": round(elapsed, 1),
        "clients": args.clients,
        "workers": args.workers,
        "cache_seconds": args.cache_seconds,
        "flip_interval_s": args.flip_interval,
        "publishes_during_load": len(markers) - 1,
        "publish_seconds_median": round(statistics.median(publish_seconds), 3),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "p50_ms": round(pct(stats.latencies, 50), 2),
        "p99_ms": round(pct(stats.latencies, 99), 2),
        "max_ms": round(max(stats.latencies) * 1000, 2) if requests else None,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "server_errors_5xx": sum(v for k, v in stats.statuses.items() if k >= 500),
        "user_answers_checked": stats.checked,
        "wrong_answers": len(stats.wrong),
        "wrong_examples": stats.wrong[:5],
        "versions_seen": len(stats.version_markers),
        "versions_mislabelled": mislabelled,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    outcome = main()
    failed = outcome["server_errors_5xx"] or outcome["wrong_answers"]
    sys.exit(1 if failed or outcome["versions_mislabelled"] else 0)
