"""``recsys nightly-batch --scheduler`` on a real dask.distributed cluster (issue #17).

The module starts ``dask scheduler`` and two ``dask worker`` processes on loopback, in
another folder than the batch's, once for all its tests. The batch itself runs in this
process (Typer's ``CliRunner``) from its own folder with a *relative* ``runs`` directory:
every path the workers get must therefore be absolute. The workers import
:mod:`tests.integration.dask_worker_faults` (``--preload``), which logs each shard task a
worker starts and, when a test arms it, kills the first worker whose shard has written its
users to Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from distributed import Client
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.config import RedisConfig
from recsys_batch.publish import keys, status
from tests.conftest import free_port
from tests.integration import dask_worker_faults
from tests.nightly import expected_values, saved_recommendations, stored_values
from tests.small import small_env

pytestmark = pytest.mark.integration
runner = CliRunner()

USERS = 300
SHARD_USERS = 100
SHARDS = 3
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cluster:
    """A scheduler and two worker processes on loopback."""

    address: str
    faults: Path
    """The preload's folder: ``started`` (shard tasks begun), ``arm`` and ``fired``."""
    workers_cwd: Path

    def wait_for_workers(self, n: int = 2) -> None:
        with Client(self.address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=60)

    def started(self) -> list[tuple[int, str]]:
        """``(pid, key)`` of every shard task a worker started, oldest first."""
        path = self.faults / "started"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(int(pid), key) for pid, key in (line.split(" ", 1) for line in lines)]


def _start(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,  # one process group: the nanny and its worker go together
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill the scheduler and the workers with their nannies' children (process groups).

    Nothing of the cluster outlives the module; a graceful shutdown would only add seconds.
    """
    for proc in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("dask")
    elsewhere, faults = root / "elsewhere", root / "faults"
    elsewhere.mkdir()
    faults.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        dask_worker_faults.FAULTS_ENV: str(faults),
    }
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [
        _start(
            ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            elsewhere,
            env,
            root / "scheduler.log",
        )
    ]
    try:
        for n in range(2):
            worker = [
                "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                "--name", f"w{n}", "--local-directory", str(elsewhere / f"w{n}"),
                "--preload", dask_worker_faults.__file__,
            ]  # fmt: skip
            procs.append(_start(worker, elsewhere, env, root / f"worker-{n}.log"))
        started = Cluster(address, faults, elsewhere)
        started.wait_for_workers()
        yield started
    finally:
        _stop(procs)


@pytest.fixture
def batch_env(
    tmp_path: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The small night, run from ``tmp_path/batch`` with a relative runs directory."""
    folder = tmp_path / "batch"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return {
        **small_env(USERS, SHARD_USERS),
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": key_prefix,
        "RECSYS_RUN__RUNS_DIR": "runs",
        "RECSYS_RUN__LOCK_FILE": "nightly.lock",
    }


def nightly(env: dict[str, str], *options: str) -> dict[str, Any]:
    """``recsys nightly-batch --source synthetic --no-gate``; its JSON summary."""
    args = ["nightly-batch", "--source", "synthetic", "--no-gate", "--log-format", "json"]
    result = runner.invoke(app, [*args, *options], env=env)
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def published(url: str, prefix: str, version: str) -> dict[str, Any]:
    """Every key of ``version`` but its meta hash (run id, times): suffix -> value."""
    client = redis.Redis.from_url(url)
    try:
        base = keys.version_prefix(version, prefix)
        found: dict[str, Any] = {}
        for raw in client.scan_iter(match=base + "*", count=10_000):
            name = raw.decode()
            suffix = name.removeprefix(base)
            if suffix == "meta":
                continue
            kind = client.type(raw).decode()
            found[suffix] = client.hgetall(raw) if kind == "hash" else client.get(raw)
        return found
    finally:
        client.close()


def stored(url: str, prefix: str, version: str) -> dict[int, list[int]]:
    """Every user's stored items in ``version``, read back through the format-2 helpers."""
    client = redis.Redis.from_url(url)
    try:
        return stored_values(client, version, prefix)
    finally:
        client.close()


def test_the_cluster_publishes_exactly_what_the_local_executor_publishes(
    cluster: Cluster, batch_env: dict[str, str], redis_url: str, key_prefix: str
) -> None:
    local = nightly(batch_env, "--executor", "local")
    before = len(cluster.started())
    remote = nightly(batch_env, "--scheduler", cluster.address)

    by_local = published(redis_url, key_prefix, local["version"])
    by_cluster = published(redis_url, key_prefix, remote["version"])
    assert remote["users"] == USERS
    assert len(stored(redis_url, key_prefix, remote["version"])) == USERS
    assert by_cluster == by_local
    by_user_rank = ["user_id", "rank"]
    assert (
        saved_recommendations(Path(remote["run_dir"]))
        .sort(by_user_rank)
        .equals(saved_recommendations(Path(local["run_dir"])).sort(by_user_rank))
    )
    # The shards ran in the worker processes, and nothing landed in their folder.
    ran = cluster.started()[before:]
    assert len(ran) == SHARDS
    assert {pid for pid, _ in ran}.isdisjoint({os.getpid()})
    assert not (cluster.workers_cwd / "runs").exists()
    assert not (Path(remote["run_dir"]) / "shards").exists()  # removed when the run ends


def test_a_worker_killed_after_its_shards_first_write_is_rerun_on_another_worker(
    cluster: Cluster,
    batch_env: dict[str, str],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """Issue #29: a worker is SIGKILLed after its shard wrote its users to Redis, before the
    result reached the driver. That shard runs again on another worker process (the
    scheduler's rerun of the same task key, or the driver's resubmission when the killed
    worker held the last copy of the scattered context), the rewrite is harmless, and
    the version is complete, verified and live with every user's saved list. The marker is
    removed before arming, so the kill checked is this run's. Stage 1 knows only a sample of
    the users (#28), so the rerun also folds its other users in again from the shard files."""
    cluster.wait_for_workers()
    shared = tmp_path / "shared"
    env = {
        **batch_env,
        "RECSYS_SCALE__SHARED_DIR": f"file://{shared}",
        "RECSYS_SCALE__STAGE1_USERS": str(USERS * 2 // 5),
    }
    fired = cluster.faults / "fired"
    fired.unlink(missing_ok=True)
    before = len(cluster.started())
    (cluster.faults / "arm").touch()
    try:
        summary = nightly(env, "--scheduler", cluster.address)
    finally:
        (cluster.faults / "arm").unlink()
    killed_pid, key, version = fired.read_text().split()
    assert version == summary["version"]  # killed in this run's write
    ran = cluster.started()[before:]
    # The scheduler reruns the task (the same key), or, when the killed worker held the
    # last copy of the scattered context, the driver scatters it again and resubmits the
    # shards the scheduler forgot (new keys, shard-<run>-<shard>-<attempt>): either way
    # by shard number, the killed one ran twice, on two processes, every other once.
    shard_of = {started: started.rsplit("-", 2)[1] for _, started in ran}
    runs = [pid for pid, started in ran if shard_of[started] == shard_of[key]]
    assert len(runs) == 2, ran  # the killed shard ran twice ...
    assert runs[0] == int(killed_pid) and runs[1] != int(killed_pid)  # ... on two processes
    assert os.getpid() not in {pid for pid, _ in ran}
    assert len(set(shard_of.values())) == SHARDS  # every other shard ran once
    assert len(ran) == SHARDS + 1

    expected = expected_values(saved_recommendations(Path(summary["run_dir"])))
    assert len(expected) == USERS
    assert stored(redis_url, key_prefix, version) == expected
    cfg = RedisConfig(key_prefix=key_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        assert status.live_version(client, cfg) == version
        info = status.version_info(client, version, cfg)
        assert info.state == keys.STATE_COMPLETE  # set by finish_version after verifying
        assert info.users == USERS
    finally:
        client.close()
    assert not shared.exists() or not any(shared.iterdir())  # the run's inputs are gone
    cluster.wait_for_workers()  # the nanny restarted the killed worker
