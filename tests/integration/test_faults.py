"""Faults during the nightly batch and while the API serves (issues #7, #15).

Every test runs the shipped command, ``recsys nightly-batch``, with the real two-stage model
on 300 synthetic users scored in three shards of 100 (``tests.small.small_env``): in this
process through Typer's ``CliRunner``, or as a subprocess where the batch itself is killed.
A Redis fault is injected at a known point by wrapping ``writer.write_users``, which every
shard calls: the first shard is written, then Redis dies, hangs or runs out of memory, then
the second shard tries. A test that stops, kills or restarts Redis runs its own
redis-server. What each test proves is listed in docs/reliability.md.
"""

from __future__ import annotations

import errno
import os
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from api.main import create_app
from recsys_batch.config import Settings, load_settings
from recsys_batch.errors import LockError
from recsys_batch.publish import keys, writer
from recsys_batch.run import pipeline, records, stages
from recsys_batch.run.lock import run_lock
from tests.conftest import free_port, start_redis_server
from tests.integration.faults_helpers import (
    AOF,
    USERS,
    BatchProcess,
    OwnRedis,
    a_user,
    assert_live_is_whole,
    batch_env,
    failing_disk,
    flat,
    frozen_redis_bound,
    live,
    nightly,
    own_redis,
    snapshot,
    users_written,
    version_keys,
    versions_with_keys,
)

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration


class FaultAtSecondShard:
    """Wraps ``writer.write_users``: shard 1 is written, then ``fault()``, then shard 2 tries.

    Records the version being written and the moment of the fault.
    """

    def __init__(self, fault: Callable[[], None]) -> None:
        self.fault = fault
        self.original = writer.write_users
        self.calls = 0
        self.first_shard_users = 0
        self.version: str | None = None
        self.fault_at: float | None = None

    def __call__(self, client: Any, version: str, *args: Any, **kwargs: Any) -> writer.Written:
        self.calls += 1
        self.version = version
        if self.calls == 2:
            self.fault()
            self.fault_at = time.monotonic()
        written = self.original(client, version, *args, **kwargs)
        if self.calls == 1:
            self.first_shard_users = written.users
        return written


def out_of_memory(server: OwnRedis) -> Callable[[], None]:
    """Lower ``maxmemory`` to what the server holds now: the next write is refused (OOM)."""

    def fault() -> None:
        with server.client() as admin:
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory", str(used))

    return fault


# --- Redis dies, hangs or runs out of memory while the version is written -------------------


@pytest.mark.parametrize("how", ["dies", "hangs", "out-of-memory"])
def test_redis_fault_mid_publish(
    how: str, tmp_path: Path, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis killed (SIGKILL, restarted from its AOF), frozen (SIGSTOP) or full (noeviction)
    after the first shard was written: exit 4, the previous version is live and byte-for-
    byte whole, and the next night publishes and removes every key of the failed version."""
    extra = AOF if how == "dies" else ("--maxmemory-policy", "noeviction")
    with own_redis(tmp_path / "redis-data", *extra) as server:
        env = batch_env(tmp_path, server.url, key_prefix)
        first = nightly(env, "--no-gate")
        assert first.exit_code == 0, first.output
        with server.client() as client:
            before = assert_live_is_whole(client, key_prefix)
            whole = snapshot(client, key_prefix, before)

        faults = {
            "dies": lambda: server.signal(signal.SIGKILL),
            "hangs": lambda: server.signal(signal.SIGSTOP),
            "out-of-memory": out_of_memory(server),
        }
        wrapper = FaultAtSecondShard(faults[how])
        with monkeypatch.context() as patch:
            patch.setattr(writer, "write_users", wrapper)
            failed = nightly(env, "--no-gate")
        assert failed.exit_code == 4, failed.output
        assert "Traceback" not in failed.output
        if how == "out-of-memory":
            assert "OOM command not allowed" in flat(failed.output)
        else:
            assert "live version was left untouched" in flat(failed.output)
        assert wrapper.calls == 2  # the fault stopped the run in the second shard
        assert 0 < wrapper.first_shard_users < USERS
        half = wrapper.version
        assert half is not None and half != before

        # Redis restored.
        if how == "dies":
            server.restart()
        elif how == "hangs":
            server.signal(signal.SIGCONT)
        with server.client() as client:
            if how == "out-of-memory":
                client.config_set("maxmemory", "0")
            assert assert_live_is_whole(client, key_prefix) == before
            assert snapshot(client, key_prefix, before) == whole
            leftovers = version_keys(client, key_prefix, half)
            if how != "out-of-memory":  # Redis was gone: the failed run could not clean up
                users_left = users_written(client, key_prefix, half)
                assert wrapper.first_shard_users <= users_left < USERS
                assert client.hget(keys.meta_key(half, key_prefix), "state") == b"writing"
                assert all(0 < client.ttl(name) <= 14 * 86_400 for name in leftovers)

        rerun = nightly(env, "--no-gate")
        assert rerun.exit_code == 0, rerun.output
        with server.client() as client:
            after = assert_live_is_whole(client, key_prefix)
            assert after not in {before, half}
            assert version_keys(client, key_prefix, half) == []
            assert versions_with_keys(client, key_prefix) == {before, after}
            assert client.get(keys.previous_key(key_prefix)).decode() == before
            assert snapshot(client, key_prefix, before) == whole


def test_frozen_redis_ends_the_batch_within_the_bound(
    tmp_path: Path, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis frozen mid-publish (SIGSTOP) ends the batch with exit 4 within the bound of
    :func:`frozen_redis_bound`, read from the settings the CLI builds: every attempt of the
    write, the backoff between them, the one-attempt removal of the failed version and the
    one-attempt run summary (issue #29: the bound left the summary out, the test allowed
    20 s on top). 25% covers the process's own work; the log shows each counted call."""
    with own_redis(tmp_path / "redis-data") as server:
        env = batch_env(
            tmp_path,
            server.url,
            key_prefix,
            RECSYS_REDIS__RETRIES="2",
            RECSYS_REDIS__SOCKET_TIMEOUT_SECONDS="0.5",
            RECSYS_REDIS__CONNECT_TIMEOUT_SECONDS="0.5",
            RECSYS_REDIS__RETRY_BACKOFF_SECONDS="0.1",
        )
        for name, value in env.items():  # the settings the CLI will build from them
            monkeypatch.setenv(name, value)
        cfg = load_settings().redis
        bound = frozen_redis_bound(cfg)

        wrapper = FaultAtSecondShard(lambda: server.signal(signal.SIGSTOP))
        monkeypatch.setattr(writer, "write_users", wrapper)
        failed = nightly(env, "--no-gate")
        took = time.monotonic() - (wrapper.fault_at or 0.0)
        assert failed.exit_code == 4, failed.output
        assert wrapper.calls == 2
        output = flat(failed.output)
        assert output.count("Redis user write failed (TimeoutError), retry") == cfg.retries
        assert output.count("could not remove the unfinished version") == 1
        assert output.count("run summary not written") == 1
        print(f"\nfrozen Redis: exit 4 after {took:.2f} s (bound {bound:.2f} s)")
        assert took <= bound * 1.25


def test_redis_dies_between_version_start_and_user_writes_exit_4(
    tmp_path: Path, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue #7): Redis gone when the first shard's writer connects is a
    PublishError (exit 4); before the fix a bare ``redis.ConnectionError`` escaped (exit 1)."""
    with own_redis(tmp_path / "redis-data") as server:
        env = batch_env(tmp_path, server.url, key_prefix)
        original = writer.write_users

        def write(*args: Any, **kwargs: Any) -> writer.Written:
            server.signal(signal.SIGKILL)
            return original(*args, **kwargs)

        monkeypatch.setattr(writer, "write_users", write)
        failed = nightly(env, "--no-gate")
        assert failed.exit_code == 4, failed.output
        assert "Redis failed during user write" in flat(failed.output)
        assert "live version was left untouched" in flat(failed.output)
        assert "Traceback" not in failed.output


# --- the batch process killed in each stage ---------------------------------------------------

KILLS = [
    *((name, signal.SIGKILL) for name, _ in pipeline.STAGES if name != "score_and_publish"),
    ("mid-publish", signal.SIGKILL),  # score_and_publish, the first shard written
    ("after-flip", signal.SIGKILL),  # the new version live, its cleanup not run
    ("mid-publish", signal.SIGTERM),  # what a scheduler sends; no handler is installed
]


@pytest.mark.parametrize(("pause_at", "sig"), KILLS, ids=[f"{p}-{s.name}" for p, s in KILLS])
def test_batch_killed_in_each_stage(
    pause_at: str,
    sig: signal.Signals,
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    real_redis: redis.Redis,
) -> None:
    """The batch, a subprocess, is held where the previous stage's ``stage`` line was logged
    (or mid-publish, or just after the flip) and killed there: the lock is free again, the
    manifest reads ``running``, the live version is whole (the old one, byte for byte,
    before the flip), and the next run publishes and removes what the killed one left."""
    env = batch_env(tmp_path, redis_url, key_prefix)
    first = nightly(env, "--no-gate")
    assert first.exit_code == 0, first.output
    before = assert_live_is_whole(real_redis, key_prefix)
    whole = snapshot(real_redis, key_prefix, before)
    names = [name for name, _ in pipeline.STAGES]

    gate = [] if pause_at in {"load", "gate"} else ["--no-gate"]  # the backtest: 2 s
    batch = BatchProcess(env, tmp_path / "hook", pause_at, *gate)
    try:
        batch.wait_paused()
        stage = "score_and_publish" if pause_at in {"mid-publish", "after-flip"} else pause_at
        assert batch.stages_logged() == names[: names.index(stage)]
        registered = real_redis.zrange(keys.versions_key(key_prefix), 0, -1)
        half = next((v.decode() for v in registered if v.decode() != before), None)
        if pause_at not in {"mid-publish", "after-flip"}:
            assert half is None  # Redis not written yet
        if pause_at == "mid-publish":  # really in the middle: some but not all users written
            assert half is not None
            assert real_redis.hget(keys.meta_key(half, key_prefix), "state") == b"writing"
            assert 0 < users_written(real_redis, key_prefix, half) < USERS
        # The running batch holds the lock: a second one refuses.
        with pytest.raises(LockError, match="another nightly batch is running"):
            with run_lock(Path(env["RECSYS_RUN__LOCK_FILE"])):
                pass
    finally:
        status = batch.kill(sig)
    assert status == -sig, batch.output()

    with run_lock(Path(env["RECSYS_RUN__LOCK_FILE"])):  # released by the kernel on kill -9
        pass
    manifests = [records.read_manifest(d) for d in (tmp_path / "runs").iterdir()]
    assert sorted(m["status"] for m in manifests) == ["published", "running"]
    now_live = assert_live_is_whole(real_redis, key_prefix)
    if pause_at == "after-flip":
        assert now_live == half
        assert real_redis.get(keys.previous_key(key_prefix)).decode() == before
    else:
        assert now_live == before
    assert snapshot(real_redis, key_prefix, before) == whole

    rerun = nightly(env, "--no-gate")
    assert rerun.exit_code == 0, rerun.output
    newest = assert_live_is_whole(real_redis, key_prefix)
    assert versions_with_keys(real_redis, key_prefix) == {now_live, newest}
    if half is not None and half != now_live:
        assert version_keys(real_redis, key_prefix, half) == []


def test_two_batches_at_once_second_refuses(
    tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    """Two real processes: the second exits 5 naming the holder's pid, publishes nothing."""
    env = batch_env(tmp_path, redis_url, key_prefix)
    first = BatchProcess(env, tmp_path / "hook", "train", "--no-gate")
    try:
        first.wait_paused()
        second = BatchProcess(env, tmp_path / "hook", None, "--no-gate")
        assert second.wait(timeout=120) == 5, second.output()
    finally:
        first.kill(signal.SIGKILL)
    assert "another nightly batch is running" in flat(second.output())
    assert f"pid {first.pid}" in flat(second.output())
    assert "Traceback" not in second.output()
    assert live(real_redis, key_prefix) is None
    assert list(real_redis.scan_iter(match=f"{key_prefix}:*")) == []


# --- the runs disk is read-only or full ------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "full"])
def test_runs_dir_unwritable_nothing_published(
    code: int, tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    """The runs disk is read-only or full before the run starts: exit 2, Redis untouched."""
    env = batch_env(tmp_path, redis_url, key_prefix)
    runs_dir = tmp_path / "runs"
    if os.geteuid() == 0 or code == errno.ENOSPC:
        with failing_disk(runs_dir, code):
            result = nightly(env, "--no-gate")
    else:
        runs_dir.mkdir(mode=0o555)
        result = nightly(env, "--no-gate")
    assert result.exit_code == 2, result.output
    assert "cannot create the run directory" in flat(result.output)
    assert "RECSYS_RUN__RUNS_DIR" in flat(result.output)
    assert "Traceback" not in result.output
    assert list(real_redis.scan_iter(match=f"{key_prefix}:*")) == []


def test_runs_disk_full_while_saving_nothing_published(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    real_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disk fills up while the trained models are saved: exit 2, the live version is
    unchanged and whole, Redis gets no new version."""
    env = batch_env(tmp_path, redis_url, key_prefix)
    assert nightly(env, "--no-gate").exit_code == 0
    before = assert_live_is_whole(real_redis, key_prefix)
    whole = snapshot(real_redis, key_prefix, before)

    def save_on_full_disk(state: stages.RunState) -> int:
        with failing_disk(tmp_path / "runs", errno.ENOSPC):
            return stages.save(state)

    full = [(n, save_on_full_disk if n == "save" else s) for n, s in pipeline.STAGES]
    monkeypatch.setattr(pipeline, "STAGES", full)
    result = nightly(env, "--no-gate")
    assert result.exit_code == 2, result.output
    assert "cannot save the models" in flat(result.output)
    assert "No space left on device" in flat(result.output)
    assert "Traceback" not in result.output
    assert live(real_redis, key_prefix) == before
    assert real_redis.zrange(keys.versions_key(key_prefix), 0, -1) == [before.encode()]
    assert snapshot(real_redis, key_prefix, before) == whole


# --- Redis restarts while the API serves ------------------------------------------------------


def api_settings(url: str, prefix: str) -> Settings:
    return Settings(
        redis={"url": url, "key_prefix": prefix},
        api={"current_cache_seconds": 0.05, "redis_timeout_seconds": 0.3},
    )


def test_api_fast_503_then_recovers_without_restart(tmp_path: Path, key_prefix: str) -> None:
    """A hung Redis (SIGSTOP) answers 503 within the timeout, not a hang; after SIGCONT, and
    after a crash and restart from the AOF, the same app serves the published version."""
    with own_redis(tmp_path / "redis-data", *AOF) as server:
        published = nightly(batch_env(tmp_path, server.url, key_prefix), "--no-gate")
        assert published.exit_code == 0, published.output
        with server.client() as client:
            version = assert_live_is_whole(client, key_prefix)
            user, items = a_user(client, key_prefix, version)

        with TestClient(create_app(api_settings(server.url, key_prefix))) as api:

            def ok() -> None:
                resp = api.get(f"/v1/recommendations/{user}")
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert (body["version"], body["items"], body["source"]) == (
                    version,
                    items,
                    "personal",
                )

            timings: dict[str, float] = {}

            def fails_fast(path: str, what: str) -> None:
                started = time.monotonic()
                resp = api.get(path)
                took = time.monotonic() - started
                assert resp.status_code == 503
                assert resp.json()["error"] == "redis_unavailable"
                assert took < 2.0  # 0.3 s timeout and one retry, never a hang
                timings[what] = round(took, 3)

            ok()
            server.signal(signal.SIGSTOP)
            time.sleep(0.1)  # the cached pointer expires
            fails_fast(f"/v1/recommendations/{user}", "hung: lookup")
            fails_fast("/readyz", "hung: readyz")
            assert api.get("/healthz").status_code == 200
            server.signal(signal.SIGCONT)
            ok()

            server.signal(signal.SIGKILL)
            fails_fast(f"/v1/recommendations/{user}", "down: lookup")
            server.restart()
            ok()
            assert api.get("/readyz").status_code == 200
            print(f"\n503 answer times (s): {timings}")  # pytest -s shows them


def test_api_started_before_redis_recovers_by_itself(tmp_path: Path, key_prefix: str) -> None:
    """The API starts while Redis is down (503, /healthz 200), then serves once Redis is up
    and the nightly batch has published: no restart of the API."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with TestClient(create_app(api_settings(url, key_prefix))) as api:
        assert api.get("/v1/recommendations/1").status_code == 503
        assert api.get("/readyz").status_code == 503
        assert api.get("/healthz").status_code == 200
        proc, _ = start_redis_server(tmp_path, port=port)
        try:
            assert api.get("/readyz").json()["error"] == "no_live_version"
            published = nightly(batch_env(tmp_path, url, key_prefix), "--no-gate")
            assert published.exit_code == 0, published.output
            client = redis.Redis.from_url(url)
            version = assert_live_is_whole(client, key_prefix)
            user, items = a_user(client, key_prefix, version)
            client.close()
            time.sleep(0.1)
            body = api.get(f"/v1/recommendations/{user}").json()
            assert (body["items"], body["source"]) == (items, "personal")
        finally:
            proc.kill()
            proc.wait(timeout=10)
