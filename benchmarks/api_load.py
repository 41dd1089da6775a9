"""Load benchmark of the lookup API (issue #6); writes JSON and prints a markdown summary.

Publishes a realistic version (``--users`` users x 5 items, a popular list, item attributes)
under a unique key prefix into the Redis at ``--redis-url`` the way the nightly batch does
(:func:`tests.publishing.publish_lists`), serves the API with uvicorn
(uvloop, httptools, ``--workers``, no access log) next to the bare ASGI endpoint of
``benchmarks/bare_asgi.py`` served the same way, then measures:

1. one connection: HTTP latency (Python keep-alive client over random users, and Debian's
   ``hey -c 1``) and the server-side lookup time the service reports in ``Server-Timing``;
2. a fixed offered load of random known users (default 2,000 req/s over 20 connections,
   ``benchmarks/loadgen.py``: open loop, latency counted from the scheduled send time when a
   connection was still busy): latency percentiles and errors, and the bare endpoint at the
   same load;
3. saturation at 50 connections: the API over random known users next to the bare endpoint,
   in ``--rounds`` interleaved rounds (the median round is reported), with ``wrk`` (a Lua
   script draws the user of each request) or, where ``wrk`` is not installed, ``hey`` over
   one user, with the CPU time (user + system) each server process spent per request in
   the round: on a shared host, throughput moves with the neighbours' load far more than
   CPU per request does; and ``redis-benchmark -t get`` on the same Redis.

Usage::

    .venv/bin/python benchmarks/api_load.py --out api.json

The keys it wrote are removed at the end (they also carry a one-day TTL).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadgen import fixed_rate  # noqa: E402 - benchmarks/ is sys.path[0]

from recsys_batch.config import RedisConfig  # noqa: E402
from recsys_batch.data import columns as C  # noqa: E402
from tests.publishing import publish_lists  # noqa: E402

DEPARTMENTS = ["GROCERY", "PRODUCE", "MEAT", "DELI", "PASTRY", "DRUG GM"]


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def publish(client: redis.Redis, cfg: RedisConfig, users: int, seed: int = 7) -> str:
    """Publish one complete version of ``users`` random lists; return its id."""
    rng = random.Random(seed)
    catalogue = list(range(800_000, 802_500))
    lists = [rng.sample(catalogue, 5) for _ in range(users)]
    recs = pl.DataFrame(
        {
            C.USER: [user for user in range(1, users + 1) for _ in range(5)],
            C.ITEM: [item for items in lists for item in items],
            C.RANK: [rank for _ in range(users) for rank in range(1, 6)],
            C.SCORE: [1.0] * (users * 5),
        },
        schema=C.RECOMMENDATIONS,
    )
    attrs = pl.DataFrame(
        {
            C.ITEM: catalogue,
            "department": [DEPARTMENTS[item % 6] for item in catalogue],
            "brand": "National",
            "size": "16 OZ",
        }
    )
    return publish_lists(client, recs, catalogue[:20], attrs, cfg, {"run_id": "api-load"})


def unpublish(client: redis.Redis, prefix: str) -> None:
    names = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
    for start in range(0, len(names), 5000):
        client.unlink(*names[start : start + 5000])


def serve(target: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--no-server-header",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def wait_ready(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    msg = f"server on port {port} not ready at {path}"
    raise RuntimeError(msg)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU time of a server process and its workers so far."""
    root = psutil.Process(proc.pid)
    total = 0.0
    for one in [root, *root.children(recursive=True)]:
        times = one.cpu_times()
        total += times.user + times.system
    return total


def measured(proc: subprocess.Popen[bytes], run: Any) -> dict[str, Any]:
    """``run()``'s summary with the server's CPU microseconds per request it answered."""
    before = cpu_seconds(proc)
    result: dict[str, Any] = run()
    spent = cpu_seconds(proc) - before
    result["cpu_us_per_request"] = round(spent / max(result["total"], 1) * 1e6, 1)
    return result


def single_connection(port: int, requests: int, users: int) -> dict[str, Any]:
    """Keep-alive Python client over random users (about 1 in 6 unknown: fallback)."""
    rng = random.Random(1)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    client_ms: list[float] = []
    server_ms: list[float] = []
    statuses: dict[int, int] = {}
    for _ in range(requests):
        user = rng.randint(1, users + users // 5)
        start = time.perf_counter()
        conn.request("GET", f"/v1/recommendations/{user}")
        resp = conn.getresponse()
        resp.read()
        client_ms.append((time.perf_counter() - start) * 1000)
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        timing = resp.getheader("server-timing") or ""
        match = re.search(r"dur=([0-9.]+)", timing)
        if match:
            server_ms.append(float(match.group(1)))
    conn.close()
    return {
        "requests": requests,
        "statuses": statuses,
        "http_ms": {q: round(pct(client_ms, q), 4) for q in (50, 90, 99)},
        "http_mean_ms": round(statistics.fmean(client_ms), 4),
        "server_lookup_ms": {q: round(pct(server_ms, q), 4) for q in (50, 90, 99)},
    }


def hey(url: str, *args: str) -> dict[str, Any]:
    """Run ``hey`` and parse its summary."""
    out = subprocess.run(
        ["hey", *args, url], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    result: dict[str, Any] = {"args": " ".join(args)}
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    result["rps"] = round(float(match.group(1)), 1) if match else None
    result["latency_ms"] = {
        int(q): round(float(s) * 1000, 3)
        for q, s in re.findall(r"^\s+(\d+)% in ([0-9.]+) secs", out, flags=re.M)
    }
    result["statuses"] = {
        int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    }
    errors = out.split("Error distribution:", 1)
    result["errors"] = (
        sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", errors[1], flags=re.M))
        if len(errors) == 2
        else 0
    )
    result["total"] = sum(result["statuses"].values())
    return result


WRK_SCRIPT = """
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", "%(prefix)s" .. math.random(%(first)d, %(last)d))
end
"""


def wrk(base: str, path: str, connections: int, duration: int, users: int | None) -> dict[str, Any]:
    """Run ``wrk -t2`` against ``base + path``; with ``users``, a Lua script appends a user id
    drawn from ``1..users`` to ``path`` for each request. Returns its parsed summary."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    script = None
    if users is not None:
        script = Path(f"/tmp/api_load_{os.getpid()}.lua")
        script.write_text(WRK_SCRIPT % {"seed": 1, "prefix": path, "first": 1, "last": users})
        cmd += ["-s", str(script)]
    try:
        out = subprocess.run(
            [*cmd, base + path], capture_output=True, text=True, check=True, timeout=600
        ).stdout
    finally:
        if script is not None:
            script.unlink(missing_ok=True)
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    result: dict[str, Any] = {"args": " ".join(cmd[1:5]) + (" random users" if users else "")}
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    result["rps"] = round(float(match.group(1)), 1) if match else None
    total = re.search(r"(\d+) requests in", out)
    result["total"] = int(total.group(1)) if total else 0
    result["latency_ms"] = {
        int(q): round(float(v) * unit[u], 3)
        for q, v, u in re.findall(r"^\s+(\d+)%\s+([0-9.]+)(us|ms|s)$", out, flags=re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    result["errors"] = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1))) if socket_errors else 0
    )
    result["statuses"] = {}
    return result


def redis_benchmark(host: str, port: int, requests: int) -> float | None:
    if shutil.which("redis-benchmark") is None:
        return None
    out = subprocess.run(
        ["redis-benchmark", "-h", host, "-p", str(port), "-t", "get", "-n", str(requests)]
        + ["-c", "50", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    match = re.search(r"GET: ([0-9.]+) requests per second", out.replace("\r", "\n"))
    return float(match.group(1)) if match else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--users", type=int, default=2500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--duration", type=int, default=10, help="seconds per load run")
    parser.add_argument("--rate", type=int, default=2000, help="offered load, req/s")
    parser.add_argument("--connections", type=int, default=20, help="for the fixed load")
    parser.add_argument("--single", type=int, default=5000, help="requests on one connection")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved API/bare saturation rounds (median)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if shutil.which("hey") is None:
        parser.error("hey is not installed (fix: apt-get install -y hey)")

    client = redis.Redis.from_url(args.redis_url)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    publish(client, RedisConfig(url=args.redis_url, key_prefix=prefix, ttl_days=1), args.users)
    env = {
        **os.environ,
        "RECSYS_REDIS__URL": args.redis_url,
        "RECSYS_REDIS__KEY_PREFIX": prefix,
        "PYTHONPATH": str(ROOT),
    }
    api_port, bare_port = free_port(), free_port()
    procs = [
        serve("api.main:app", api_port, args.workers, env),
        serve("benchmarks.bare_asgi:app", bare_port, args.workers, env),
    ]
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": [round(x, 2) for x in os.getloadavg()],
            "note": "shared with other sessions working concurrently",
        },
        "workers": args.workers,
        "users": args.users,
    }
    try:
        wait_ready(api_port, "/readyz")
        wait_ready(bare_port, "/")
        api_url = f"http://127.0.0.1:{api_port}/v1/recommendations/42"
        bare_url = f"http://127.0.0.1:{bare_port}/"
        hey(api_url, "-n", "3000", "-c", "10")  # warm-up: connections, version cache
        hey(bare_url, "-n", "3000", "-c", "10")

        report["single_connection"] = single_connection(api_port, args.single, args.users)
        report["single_connection_hey"] = hey(api_url, "-n", str(args.single), "-c", "1")
        known = [f"/v1/recommendations/{u}" for u in range(1, args.users + 1)]
        report["fixed_load"] = fixed_rate(
            "127.0.0.1", api_port, known, args.rate, args.connections, args.duration
        )
        report["fixed_load_bare"] = fixed_rate(  # the machine's own tail at the same load
            "127.0.0.1", bare_port, ["/"], args.rate, args.connections, args.duration
        )
        use_wrk = shutil.which("wrk") is not None
        report["saturation_client"] = (
            "wrk -t2 -c50, random known users" if use_wrk else "hey -c 50, one user (42)"
        )
        sat = ["-z", f"{args.duration}s", "-c", "50"]
        rounds: list[dict[str, Any]] = []  # interleaved: both see the same (noisy) machine
        api_base, bare_base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{bare_port}"
        api_path, wrk_args = "/v1/recommendations/", (args.duration, args.users)
        for _ in range(args.rounds):
            if use_wrk:
                api_run = measured(procs[0], partial(wrk, api_base, api_path, 50, *wrk_args))
                bare_run = measured(procs[1], partial(wrk, bare_base, "/", 50, args.duration, None))
            else:
                api_run = measured(procs[0], partial(hey, api_url, *sat))
                bare_run = measured(procs[1], partial(hey, bare_url, *sat))
            share = (api_run["rps"] or 0.0) / (bare_run["rps"] or 1.0)
            rounds.append({"api": api_run, "bare": bare_run, "share": round(share, 3)})
        median = sorted(rounds, key=lambda r: r["share"])[len(rounds) // 2]
        report["saturation_rounds"] = [
            {
                "api_rps": r["api"]["rps"],
                "bare_rps": r["bare"]["rps"],
                "share": r["share"],
                "api_cpu_us": r["api"]["cpu_us_per_request"],
                "bare_cpu_us": r["bare"]["cpu_us_per_request"],
            }
            for r in rounds
        ]
        report["cpu_us_per_request"] = {
            side: statistics.median(r[side]["cpu_us_per_request"] for r in rounds)
            for side in ("api", "bare")
        }
        report["saturation_api"] = median["api"]
        report["saturation_bare"] = median["bare"]
        report["api_share_of_bare"] = median["share"]
        url = redis.connection.parse_url(args.redis_url)
        report["redis_benchmark_get_rps"] = redis_benchmark(
            url.get("host", "127.0.0.1"), int(url.get("port", 6379)), 200_000
        )
        report["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        unpublish(client, prefix)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    return report


def _failed(run: dict[str, Any]) -> int:
    """Requests of a fixed-rate run that failed or were not answered 200."""
    not_ok = sum(n for code, n in run["statuses"].items() if code != 200)
    return int(run["errors"] + not_ok + run["requests"] - run["answered"])


def summary(r: dict[str, Any]) -> str:
    one, one_hey = r["single_connection"], r["single_connection_hey"]
    fixed, api, bare = r["fixed_load"], r["saturation_api"], r["saturation_bare"]
    bare_fixed = r["fixed_load_bare"]
    lines = [
        f"workers: {r['workers']} (API and bare endpoint); users published: {r['users']}",
        f"machine: {r['machine']}",
        "",
        "| measurement | p50 ms | p99 ms | req/s | errors |",
        "|---|---|---|---|---|",
        f"| 1 connection, HTTP (Python client) | {one['http_ms'][50]} | {one['http_ms'][99]}"
        f" | - | {sum(v for k, v in one['statuses'].items() if k != 200)} |",
        f"| 1 connection, HTTP (hey -c 1) | {one_hey['latency_ms'].get(50)} | "
        f"{one_hey['latency_ms'].get(99)} | {one_hey['rps']} | {one_hey['errors']} |",
        f"| 1 connection, lookup inside the service | {one['server_lookup_ms'][50]} | "
        f"{one['server_lookup_ms'][99]} | - | - |",
        f"| offered {fixed['offered_rps']} req/s over {fixed['connections']} connections, "
        f"random known users (loadgen) | {fixed['latency_ms'][50]} | {fixed['latency_ms'][99]}"
        f" | {fixed['achieved_rps']} | {_failed(fixed)} |",
        f"| same offered load, bare ASGI endpoint | {bare_fixed['latency_ms'][50]} | "
        f"{bare_fixed['latency_ms'][99]} | {bare_fixed['achieved_rps']} | {_failed(bare_fixed)} |",
        f"| saturation, API, 50 connections, {r['saturation_client']} (median round) | "
        f"{api['latency_ms'].get(50)} | "
        f"{api['latency_ms'].get(99)} | {api['rps']} | "
        f"{api['errors'] + sum(v for k, v in api['statuses'].items() if k != 200)} |",
        f"| saturation, bare ASGI, 50 connections (same round) | {bare['latency_ms'].get(50)} | "
        f"{bare['latency_ms'].get(99)} | {bare['rps']} | {bare['errors']} |",
        "",
        "saturation rounds (API req/s, bare req/s, share): "
        + "; ".join(
            f"{s['api_rps']:.0f}, {s['bare_rps']:.0f}, {s['share']:.1%}"
            for s in r["saturation_rounds"]
        ),
        "server CPU (user + system) per request at saturation, median of the rounds: "
        f"API {r['cpu_us_per_request']['api']} us, bare {r['cpu_us_per_request']['bare']} us "
        "(rounds: "
        + "; ".join(f"{s['api_cpu_us']} / {s['bare_cpu_us']}" for s in r["saturation_rounds"])
        + ")",
        f"API / bare endpoint (median round): {r['api_share_of_bare']:.1%}; "
        f"redis-benchmark -t get -c 50: {r['redis_benchmark_get_rps']} req/s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
