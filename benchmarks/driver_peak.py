"""The driver's peak memory of ``recsys nightly-batch`` against the number of customers (#28).

Runs the real command once per synthetic folder (``recsys data synth --users N --out DIR``),
each in its own process, and reports the driver's peak resident set (``records.peak_memory_mb``
of the batch process, which the manifest records after every stage) with the stage where it was
reached, the peak of the processes that scored the shards (the manifest's
``shard_peak_memory_mb``: the driver's own with the local executor, the largest Dask worker's
with ``--flags "--executor dask"``), the wall time and the seconds per 1,000 customers. The
driver is flat in the customer count when the last folder's peak is within ``--max-ratio`` of
the first's::

    REDIS_URL=redis://HOST:6379/0 RECSYS_REDIS__KEY_PREFIX=P \\
        python benchmarks/driver_peak.py DIR/100x DIR/200x DIR/400x --out peaks.json

Every ``RECSYS_*`` variable of the caller is passed on, so the same command measures scaled
down caps as a proxy (``RECSYS_SCALE__IN_MEMORY_ROWS=4000000`` puts every size out of core,
``RECSYS_SCALE__TRAIN_USERS`` / ``RECSYS_SCALE__STAGE1_USERS`` shrink the fixed samples).
Each run writes under ``--runs`` (its models and recommendations; removed with ``--clean``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def nightly_subprocess(
    data: Path, runs: Path, extra: list[str], env: dict[str, str]
) -> tuple[dict[str, Any], float]:
    """Run ``recsys nightly-batch --source synthetic --path data *extra`` in a child process
    with ``env`` and its runs under ``runs``; returns the run's manifest and the wall seconds
    (exits with the child's stderr tail when it fails)."""
    runs.mkdir(parents=True, exist_ok=True)
    env = {
        **env,
        "RECSYS_RUN__RUNS_DIR": str(runs),
        "RECSYS_RUN__LOCK_FILE": str(runs / "nightly.lock"),
    }
    cmd = [
        sys.executable, "-m", "cli.main", "nightly-batch",
        "--source", "synthetic", "--path", str(data), *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        msg = f"nightly-batch on {data} exited {done.returncode}"
        raise SystemExit(msg)
    manifest_path = max(runs.glob("*/manifest.json"), key=os.path.getmtime)
    return {**json.loads(manifest_path.read_text()), "run_dir": str(manifest_path.parent)}, wall


def run_one(data: Path, runs: Path, extra: list[str]) -> dict[str, Any]:
    """One ``recsys nightly-batch`` on ``data``: the driver's peak, per stage, and the wall.

    Each folder publishes under its own key prefix (``RECSYS_REDIS__KEY_PREFIX`` + ``.`` +
    the folder's name), so the gate compares a run with the live version of the same data.
    """
    prefix = os.environ.get("RECSYS_REDIS__KEY_PREFIX", "driver-peak")
    env = {**os.environ, "RECSYS_REDIS__KEY_PREFIX": f"{prefix}.{data.name}"}
    manifest, wall = nightly_subprocess(data, runs, extra, env)
    stages = {
        s["name"]: {"seconds": s["seconds"], "peak_mb": s["peak_mb"]} for s in manifest["stages"]
    }
    peak_stage = next(
        (name for name, s in stages.items() if s["peak_mb"] >= manifest["peak_memory_mb"]), None
    )
    users = manifest["data"]["users"]
    return {
        "data": str(data),
        "users": users,
        "rows": manifest["data"]["rows"],
        "in_memory": manifest["data"]["in_memory"],
        "wall_s": round(wall, 1),
        "s_per_1000_users": round(wall / users * 1000, 3),
        "driver_peak_mb": manifest["peak_memory_mb"],
        # The processes that scored the shards: the driver (local executor) or the largest
        # Dask worker (``--flags "--executor dask"``).
        "shard_peak_mb": manifest["shard_peak_memory_mb"],
        "peak_stage": peak_stage,
        "stages": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path, help="synthetic folders, smallest first")
    parser.add_argument("--runs", type=Path, default=Path("runs-driver-peak"))
    parser.add_argument("--out", type=Path, help="append one JSON line per run here")
    parser.add_argument("--max-ratio", type=float, default=1.3)
    parser.add_argument("--clean", action="store_true", help="remove --runs afterwards")
    parser.add_argument("--flags", default="", help="more nightly-batch flags, one string")
    args = parser.parse_args()
    extra = shlex.split(args.flags)
    results = []
    for data in args.data:
        result = run_one(data, args.runs, extra)
        result.update(machine=platform.node(), load=os.getloadavg()[0], date=time.strftime("%F"))
        results.append(result)
        stage_peaks = ", ".join(f"{n} {s['peak_mb']:.0f}" for n, s in result["stages"].items())
        print(
            f"{result['users']:>9,} users {result['rows']:>12,} lines: driver peak "
            f"{result['driver_peak_mb']:7.0f} MiB ({result['peak_stage']}), shards' process "
            f"peak {result['shard_peak_mb']:7.0f} MiB, wall "
            f"{result['wall_s']:7.1f} s, {result['s_per_1000_users']:.2f} s / 1,000 users; "
            f"MiB after each stage: {stage_peaks}",
            flush=True,
        )
        if args.out is not None:
            with args.out.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
    ratio = results[-1]["driver_peak_mb"] / results[0]["driver_peak_mb"]
    print(f"peak ratio largest / smallest: {ratio:.3f} (bound {args.max_ratio})")
    if args.clean:
        shutil.rmtree(args.runs, ignore_errors=True)
    if ratio > args.max_ratio:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
