"""Open-loop HTTP/1.1 load at a fixed rate over keep-alive connections (issue #18 benchmark).

``hey -q`` paces each connection itself and asks one URL; issue #18 asks for random known
users at a fixed 2,000 req/s over 20 connections. This generator (asyncio, uvloop, raw
sockets, no HTTP library) sends request ``i`` at ``start + i / rate`` on connection
``i % connections``, each path drawn from ``paths`` at random, and records latency so that
a slow server cannot hide its queue (coordinated omission): when the connection was still
busy with the previous response at the scheduled time, latency counts from the scheduled
time; when it was idle, from the moment the request was written (so the generator's own
timer slack, up to ~1 ms with uvloop, is not charged to the server).

Usage::

    python benchmarks/loadgen.py --port 8000 --rate 2000 --connections 20 --duration 10 \\
        --path-template /v1/recommendations/{} --ids 1-2500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import uvloop


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _connection(
    host: str,
    port: int,
    requests: list[tuple[float, bytes]],
    latencies: list[float],
    statuses: dict[int, int],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
    busy_until = 0.0
    try:
        for scheduled, request in requests:
            now = clock()
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            sent = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            if length:
                await reader.readexactly(length)
            done = clock()
            start = scheduled if busy_until > scheduled else sent
            latencies.append((done - start) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            busy_until = done
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    paths: list[str],
    rate: float,
    connections: int,
    duration: float,
    seed: int = 1,
) -> dict[str, Any]:
    """Offer ``rate`` req/s for ``duration`` s over ``connections`` keep-alive connections,
    each request's path drawn from ``paths``; return latency percentiles (ms) and counts."""
    rng = random.Random(seed)
    total = int(rate * duration)
    start = time.perf_counter() + 0.2  # connections open first
    per_conn: list[list[tuple[float, bytes]]] = [[] for _ in range(connections)]
    host_header = f"{host}:{port}".encode()
    for i in range(total):
        path = rng.choice(paths).encode()
        request = b"GET %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (path, host_header)
        per_conn[i % connections].append((start + i / rate, request))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    began = time.perf_counter()
    await asyncio.gather(
        *(_connection(host, port, reqs, latencies, statuses, errors) for reqs in per_conn)
    )
    took = time.perf_counter() - began - 0.2
    return {
        "offered_rps": rate,
        "connections": connections,
        "duration_s": duration,
        "requests": total,
        "answered": len(latencies),
        "achieved_rps": round(len(latencies) / took, 1) if took > 0 else None,
        "latency_ms": {q: round(pct(latencies, q), 3) for q in (50, 90, 99, 99.9)},
        "max_ms": round(max(latencies), 3) if latencies else None,
        "statuses": statuses,
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def fixed_rate(
    host: str,
    port: int,
    paths: list[str],
    rate: float,
    connections: int,
    duration: float,
    seed: int = 1,
) -> dict[str, Any]:
    """:func:`run` on a fresh uvloop event loop."""
    coro = run(host, port, paths, rate, connections, duration, seed)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--path-template", default="/v1/recommendations/{}")
    parser.add_argument("--ids", default="1-2500", help="FIRST-LAST: ids put in the template")
    args = parser.parse_args(argv)
    first, last = (int(x) for x in args.ids.split("-"))
    paths = [args.path_template.format(i) for i in range(first, last + 1)]
    report = fixed_rate(args.host, args.port, paths, args.rate, args.connections, args.duration)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
