"""Faults during the nightly batch and while the API serves (issue #7).

Every test runs the real CLI (``recsys nightly-batch``) on small synthetic data with the fake
trainer of ``tests.unit.test_pipeline`` (the real models are tested elsewhere; here only the
orchestration around them matters), against its own redis-server when the test must stop,
kill or restart it. What each test proves is listed in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from api.main import create_app
from cli.main import app
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.data.sources import Dataset
from recsys_batch.errors import LockError
from recsys_batch.publish import keys, versions
from recsys_batch.run import pipeline, records
from recsys_batch.run.lock import run_lock
from tests.conftest import start_redis_server
from tests.unit.test_pipeline import FakeTrainer

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
USERS = 300


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake trainer and a gate metric that always passes (in this process)."""

    def evaluate(dataset: Dataset, settings: Settings) -> dict[str, Any]:
        return {"precision@5": 0.3}

    monkeypatch.setattr(pipeline, "default_trainer", FakeTrainer)
    monkeypatch.setattr(pipeline, "backtest_metrics", evaluate)


def batch_env(tmp_path: Path, url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": url,
        "RECSYS_REDIS__KEY_PREFIX": prefix,
        "RECSYS_REDIS__CHUNK_SIZE": "50",
        "RECSYS_REDIS__RETRIES": "1",
        "RECSYS_REDIS__RETRY_BACKOFF_SECONDS": "0.01",
        "RECSYS_REDIS__SOCKET_TIMEOUT_SECONDS": "0.5",
        "RECSYS_REDIS__CONNECT_TIMEOUT_SECONDS": "0.5",
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
        "RECSYS_DATA__SYNTHETIC_USERS": str(USERS),
        "RECSYS_PREFILTER__MIN_DEPARTMENT_ITEMS": "1",
        "RECSYS_PREFILTER__MIN_USER_SHARE": "0",
        **extra,
    }


def nightly(env: dict[str, str]) -> Any:
    """``recsys nightly-batch`` in this process (needs the ``fake_models`` fixture)."""
    return runner.invoke(app, ["nightly-batch", "--source", "synthetic"], env=env)


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def redis_cfg(url: str, prefix: str) -> RedisConfig:
    return RedisConfig(url=url, key_prefix=prefix, retry_backoff_seconds=0.01)


def live(client: redis.Redis, prefix: str) -> str | None:
    value = client.get(keys.current_key(prefix))
    return value.decode() if value else None


def versions_with_keys(client: redis.Redis, prefix: str) -> set[str]:
    """Versions that still own at least one key (``P:v:V:...``)."""
    found = set()
    for name in client.scan_iter(match=f"{prefix}:v:*", count=10_000):
        found.add(name.decode().split(":")[2])
    return found


def assert_live_is_whole(client: redis.Redis, prefix: str) -> str:
    """``P:current`` names a complete version whose every user key exists."""
    version = live(client, prefix)
    assert version is not None
    meta = {
        k.decode(): v.decode() for k, v in client.hgetall(keys.meta_key(version, prefix)).items()
    }
    assert meta["state"] == keys.STATE_COMPLETE
    user_keys = list(client.scan_iter(match=f"{prefix}:v:{version}:u:*", count=10_000))
    assert len(user_keys) == int(meta["users"]) > 0
    assert client.get(keys.popular_key(version, prefix))
    return version


class OwnRedis:
    """A redis-server of this test only, which the test may stop, kill or restart."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.extra = extra
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc, self.port = start_redis_server(workdir, *extra)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Start it again on the same port and directory (it reloads its AOF)."""
        self.proc, _ = start_redis_server(self.workdir, *self.extra, port=self.port)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def own_redis(workdir: Path, *extra: str) -> Iterator[OwnRedis]:
    server = OwnRedis(workdir, *extra)
    try:
        yield server
    finally:
        server.close()


AOF = ("--appendonly", "yes", "--appendfsync", "always")


def midway(hook: Callable[[], None], after_chunks: int = 2) -> Callable[[Any], bytes]:
    """Wrap ``versions.resp_exists_command``, which the fast-path writer calls once per chunk
    right after sending it: ``hook`` runs inside the write loop after ``after_chunks``
    chunks were sent, so Redis stops with part of the users written."""
    original = versions.resp_exists_command
    calls = {"n": 0}

    def build(names: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] == after_chunks:
            hook()
        return original(names)

    return build


class WhenUsersApplied:
    """``hook`` once the server has applied at least one user key of the version being
    written (not merely received it: the writer pipelines, so chunk 1 may still be queued).

    Polled on a second connection: its reply comes after the server flushed its AOF
    (``appendfsync always``), so what it sees survives a SIGKILL. After ``timeout`` seconds
    ``hook`` runs anyway with ``applied`` False, which the test asserts against.
    """

    def __init__(
        self, url: str, prefix: str, live: str, hook: Callable[[], None], timeout: float = 10.0
    ) -> None:
        self.url, self.prefix, self.live, self.hook, self.timeout = url, prefix, live, hook, timeout
        self.applied = False

    def __call__(self) -> None:
        pattern = f"{self.prefix}:v:*:u:*"
        mine = f"{self.prefix}:v:{self.live}:"
        deadline = time.monotonic() + self.timeout
        with contextlib.closing(redis.Redis.from_url(self.url)) as probe:
            while not self.applied and time.monotonic() < deadline:
                names = probe.scan_iter(match=pattern, count=10_000)
                self.applied = any(not name.decode().startswith(mine) for name in names)
                if not self.applied:
                    time.sleep(0.01)
        self.hook()


# --- Redis stops or dies in the middle of a publish ----------------------------------------


@pytest.mark.usefixtures("fake_models")
@pytest.mark.parametrize("how", ["hangs", "dies"])
def test_redis_stops_mid_publish(
    how: str, tmp_path: Path, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis hangs (SIGSTOP) or dies (SIGKILL, restarted from its AOF) mid-publish: exit 4,
    the previous version stays live and whole, the half-written version is left in state
    ``writing`` with a TTL on every key, and a rerun publishes and removes it."""
    with own_redis(tmp_path / "redis-data", *AOF) as server:
        env = batch_env(tmp_path, server.url, key_prefix)
        first = nightly(env)
        assert first.exit_code == 0, first.output
        client = redis.Redis.from_url(server.url)
        before = assert_live_is_whole(client, key_prefix)

        with monkeypatch.context() as patch:
            sig = signal.SIGSTOP if how == "hangs" else signal.SIGKILL
            stop = WhenUsersApplied(server.url, key_prefix, before, lambda: server.signal(sig))
            patch.setattr(versions, "resp_exists_command", midway(stop))
            started = time.monotonic()
            failed = nightly(env)
            took = time.monotonic() - started
        assert failed.exit_code == 4, failed.output
        assert "live version was left untouched" in flat(failed.output)
        assert stop.applied  # stopped mid-write: the server had applied some user keys
        assert took < 20  # socket timeouts and bounded retries, not a hang

        if how == "hangs":
            server.signal(signal.SIGCONT)
        else:
            server.restart()
        client = redis.Redis.from_url(server.url)
        assert assert_live_is_whole(client, key_prefix) == before
        cfg = redis_cfg(server.url, key_prefix)
        half = [v for v in versions.all_versions(client, cfg) if v != before]
        assert len(half) == 1
        assert client.hget(keys.meta_key(half[0], key_prefix), "state") == b"writing"
        written = list(client.scan_iter(match=f"{key_prefix}:v:{half[0]}:*", count=10_000))
        assert len(written) > 1
        assert all(0 < client.ttl(name) <= 14 * 86_400 for name in written)

        rerun = nightly(env)
        assert rerun.exit_code == 0, rerun.output
        after = assert_live_is_whole(client, key_prefix)
        assert after not in {before, half[0]}
        assert versions_with_keys(client, key_prefix) == {before, after}
        assert client.get(keys.previous_key(key_prefix)).decode() == before
        client.close()


@pytest.mark.usefixtures("fake_models")
def test_redis_dies_between_version_start_and_user_writes_exit_4(
    tmp_path: Path, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue #7): the user writer's first connection is retried and mapped to
    PublishError too; before the fix a bare ``redis.ConnectionError`` escaped (exit 1)."""
    with own_redis(tmp_path / "redis-data") as server:
        env = batch_env(tmp_path, server.url, key_prefix)
        original = versions.write_users_raw

        def write(*args: Any) -> Any:
            server.signal(signal.SIGKILL)
            return original(*args)

        monkeypatch.setattr(versions, "write_users_raw", write)
        failed = nightly(env)
        assert failed.exit_code == 4, failed.output
        assert "live version was left untouched" in flat(failed.output)


# --- the batch process killed at each stage -------------------------------------------------

DRIVER = r"""
import contextlib, os, sys, time
from recsys_batch.run import pipeline
from recsys_batch.publish import versions
from tests.unit.test_pipeline import FakeTrainer

pause_at = sys.argv[1]
pipeline.default_trainer = FakeTrainer
pipeline.backtest_metrics = lambda dataset, settings: {"precision@5": 0.3}


def pause():
    print("PAUSED", flush=True)
    time.sleep(600)


original_stage = pipeline._stage


@contextlib.contextmanager
def stage(record, name):
    print("STAGE", name, flush=True)
    if name == pause_at:
        pause()
    with original_stage(record, name) as rows:
        yield rows


pipeline._stage = stage
if pause_at == "mid-publish":
    # The fast-path writer builds each chunk's EXISTS check right after sending the chunk:
    # pausing in the second call stops the batch with part of the users written.
    original_exists = versions.resp_exists_command
    calls = [0]

    def exists(names):
        calls[0] += 1
        if calls[0] == 2:
            pause()
        return original_exists(names)

    versions.resp_exists_command = exists
elif pause_at == "after-flip":
    original_flip = versions.flip_pointer

    def flip(client, version, cfg):
        old = original_flip(client, version, cfg)
        pause()
        return old

    versions.flip_pointer = flip

from cli.main import app

app(["nightly-batch", "--source", "synthetic"], prog_name="recsys")
"""

# prefilter, recommend and popular are pure computation between gate/train and save, like
# train: the same case, left out to keep the suite fast.
STAGES = ["load", "gate", "train", "save", "mid-publish", "after-flip"]


def start_driver(pause_at: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, pause_at],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_paused(proc: subprocess.Popen[str], timeout: float = 60) -> list[str]:
    """Read the driver's stdout until it says PAUSED; return the stages it entered."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"the batch exited ({proc.returncode}) before pausing: {err[-2000:]}")
        if line.startswith("STAGE "):
            seen.append(line.split()[1])
        if line.strip() == "PAUSED":
            return seen
    proc.kill()
    pytest.fail("the batch did not reach its pause point in time")


KILLS = [(stage, signal.SIGKILL) for stage in STAGES] + [("mid-publish", signal.SIGTERM)]


@pytest.mark.usefixtures("fake_models")
@pytest.mark.parametrize(
    ("pause_at", "sig"), KILLS, ids=[f"{stage}-{sig.name}" for stage, sig in KILLS]
)
def test_batch_killed_at_each_stage(
    pause_at: str,
    sig: signal.Signals,
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    real_redis: redis.Redis,
) -> None:
    """SIGKILL at each stage boundary (and mid-publish, and between flip and cleanup; SIGTERM,
    what a scheduler sends, mid-publish): the
    lock is free again at once, the manifest still reads (status ``running``), the live
    pointer names a whole version (the old one before the flip, the new one after), and a
    rerun publishes and leaves only the live and the previous version."""
    env = batch_env(tmp_path, redis_url, key_prefix)
    first = nightly(env)
    assert first.exit_code == 0, first.output
    before = assert_live_is_whole(real_redis, key_prefix)

    proc = start_driver(pause_at, env)
    try:
        seen = wait_paused(proc)
        assert seen[-1] == ("publish" if pause_at in {"mid-publish", "after-flip"} else pause_at)
        if pause_at == "mid-publish":  # really in the middle: part of the users written
            cfg = redis_cfg(redis_url, key_prefix)
            (half,) = [v for v in versions.all_versions(real_redis, cfg) if v != before]
            assert real_redis.hget(keys.meta_key(half, key_prefix), "state") == b"writing"
            written = list(real_redis.scan_iter(match=f"{key_prefix}:v:{half}:u:*", count=1000))
            assert 0 < len(written) < USERS
        # The running batch holds the lock: a second one refuses.
        with pytest.raises(LockError, match="another nightly batch is running"):
            with run_lock(Path(env["RECSYS_RUN__LOCK_FILE"])):
                pass
    finally:
        proc.send_signal(sig)
        proc.communicate(timeout=10)
    assert proc.returncode == -sig

    with run_lock(Path(env["RECSYS_RUN__LOCK_FILE"])):  # released by the kernel on kill -9
        pass
    killed = [
        d for d in (tmp_path / "runs").iterdir() if records.read_manifest(d)["status"] == "running"
    ]
    assert len(killed) == 1
    now_live = assert_live_is_whole(real_redis, key_prefix)
    if pause_at == "after-flip":
        assert now_live != before
        assert real_redis.get(keys.previous_key(key_prefix)).decode() == before
    else:
        assert now_live == before

    rerun = nightly(env)
    assert rerun.exit_code == 0, rerun.output
    newest = assert_live_is_whole(real_redis, key_prefix)
    assert versions_with_keys(real_redis, key_prefix) == {now_live, newest}


@pytest.mark.usefixtures("fake_models")
def test_two_batches_at_once_second_refuses(
    tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    """Two real processes: the second exits 5 naming the holder's pid, publishes nothing."""
    env = batch_env(tmp_path, redis_url, key_prefix)
    first = start_driver("train", env)
    try:
        wait_paused(first)
        second = subprocess.run(
            [sys.executable, "-m", "cli.main", "nightly-batch", "--source", "synthetic"],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        first.kill()
        first.communicate(timeout=10)
    assert second.returncode == 5, second.stderr
    assert "another nightly batch is running" in flat(second.stderr)
    assert f"pid {first.pid}" in flat(second.stderr)
    assert "Traceback" not in second.stderr
    assert live(real_redis, key_prefix) is None


# --- the runs disk is read-only or full ------------------------------------------------------


@contextlib.contextmanager
def failing_disk(under: Path, code: int) -> Iterator[None]:
    """Every file or directory creation under ``under`` fails with ``code`` (EROFS, ENOSPC).

    The suite runs as root on CI, where a read-only mode bit is not enforced, so the
    operating system's answer is simulated at the ``os`` layer that pathlib and tempfile use.
    """
    real_mkdir, real_open = os.mkdir, os.open
    prefix = str(under)

    def refuse(path: Any) -> None:
        if os.fspath(path).startswith(prefix):
            raise OSError(code, os.strerror(code), os.fspath(path))

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        refuse(path)
        real_mkdir(path, *args, **kwargs)

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    os.mkdir, os.open = mkdir, open_
    try:
        yield
    finally:
        os.mkdir, os.open = real_mkdir, real_open


@pytest.mark.usefixtures("fake_models")
@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "full"])
def test_runs_dir_read_only_nothing_published(
    code: int, tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    """The runs disk is read-only or full before the run starts: exit 2, Redis untouched."""
    env = batch_env(tmp_path, redis_url, key_prefix)
    runs_dir = tmp_path / "runs"
    if os.geteuid() == 0 or code == errno.ENOSPC:
        with failing_disk(runs_dir, code):
            result = nightly(env)
    else:
        runs_dir.mkdir(mode=0o555)
        result = nightly(env)
    assert result.exit_code == 2, result.output
    assert "cannot create the run directory" in flat(result.output)
    assert "RECSYS_RUN__RUNS_DIR" in flat(result.output)
    assert "Traceback" not in result.output
    assert live(real_redis, key_prefix) is None
    assert list(real_redis.scan_iter(match=f"{key_prefix}:*")) == []


@pytest.mark.usefixtures("fake_models")
def test_runs_disk_full_while_saving_nothing_published(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    real_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disk fills up after the run started (models and manifest): exit 2, the live
    version is unchanged, Redis gets no new version."""
    env = batch_env(tmp_path, redis_url, key_prefix)
    assert nightly(env).exit_code == 0
    before = live(real_redis, key_prefix)
    real_stage = pipeline._stage

    @contextlib.contextmanager
    def stage(record: records.RunRecord, name: str) -> Iterator[list[int]]:
        if name == "save":
            with failing_disk(tmp_path / "runs", errno.ENOSPC), real_stage(record, name) as rows:
                yield rows
        else:
            with real_stage(record, name) as rows:
                yield rows

    monkeypatch.setattr(pipeline, "_stage", stage)
    monkeypatch.setattr(FakeTrainer, "save_model", _save_with_os_open)
    result = nightly(env)
    assert result.exit_code == 2, result.output
    assert "No space left on device" in flat(result.output)
    assert live(real_redis, key_prefix) == before
    assert versions.all_versions(real_redis, redis_cfg(redis_url, key_prefix)) == [before]


def _save_with_os_open(self: FakeTrainer, model: dict[str, Any], directory: Path) -> None:
    """Save through ``os.open`` like the real writers' C code does (mkstemp, parquet)."""
    fd, tmp = tempfile.mkstemp(dir=directory)
    with os.fdopen(fd, "w") as handle:
        json.dump(model, handle)
    os.replace(tmp, directory / "model.json")


# --- Redis restarts while the API serves ------------------------------------------------------


def test_api_fast_503_then_recovers_without_restart(tmp_path: Path, key_prefix: str) -> None:
    """A hung Redis (SIGSTOP) answers 503 within the timeout, not a hang; after SIGCONT, and
    after a crash and restart from the AOF, the same app answers 200 again by itself."""
    import numpy as np  # noqa: PLC0415
    import polars as pl  # noqa: PLC0415

    with own_redis(tmp_path, *AOF) as server:
        recs = pl.DataFrame(
            {
                "user_id": np.repeat(np.arange(1, 11), 5),
                "item_id": np.tile(np.arange(101, 106), 10),
                "rank": np.tile(np.arange(1, 6, dtype=np.int32), 10),
                "score": np.ones(50, dtype=np.float32),
            }
        )
        writer = redis.Redis.from_url(server.url)
        cfg = redis_cfg(server.url, key_prefix)
        version = versions.publish_version(writer, recs, [7], None, {}, cfg)
        writer.close()
        settings = Settings(
            redis={"url": server.url, "key_prefix": key_prefix},
            api={"current_cache_seconds": 0.05, "redis_timeout_seconds": 0.3},
        )
        with TestClient(create_app(settings)) as api:

            def ok() -> None:
                resp = api.get("/v1/recommendations/3")
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert (body["version"], body["items"]) == (version, [101, 102, 103, 104, 105])

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
            fails_fast("/v1/recommendations/3", "hung: lookup")
            fails_fast("/readyz", "hung: readyz")
            assert api.get("/healthz").status_code == 200
            server.signal(signal.SIGCONT)
            ok()

            server.signal(signal.SIGKILL)
            fails_fast("/v1/recommendations/3", "down: lookup")
            server.restart()
            ok()
            assert api.get("/readyz").status_code == 200
            print(f"\n503 answer times (s): {timings}")  # pytest -s shows them


def test_api_started_before_redis_recovers_by_itself(tmp_path: Path, key_prefix: str) -> None:
    """The API starts while Redis is down (503, /healthz 200), then serves once Redis is up
    and a version is published: no restart of the API."""
    from tests.conftest import free_port  # noqa: PLC0415

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    settings = Settings(
        redis={"url": url, "key_prefix": key_prefix},
        api={"current_cache_seconds": 0.05, "redis_timeout_seconds": 0.3},
    )
    with TestClient(create_app(settings)) as api:
        assert api.get("/v1/recommendations/1").status_code == 503
        assert api.get("/readyz").status_code == 503
        assert api.get("/healthz").status_code == 200
        proc, _ = start_redis_server(tmp_path, port=port)
        try:
            assert api.get("/readyz").json()["error"] == "no_live_version"
            import polars as pl  # noqa: PLC0415

            recs = pl.DataFrame(
                {"user_id": [1], "item_id": [42], "rank": [1], "score": [1.0]},
                schema={"user_id": pl.Int64, "item_id": pl.Int64, "rank": pl.Int32,
                        "score": pl.Float32},
            )  # fmt: skip
            writer = redis.Redis.from_url(url)
            versions.publish_version(writer, recs, [7], None, {}, redis_cfg(url, key_prefix))
            writer.close()
            time.sleep(0.1)
            body = api.get("/v1/recommendations/1").json()
            assert (body["items"], body["source"]) == ([42], "personal")
        finally:
            proc.kill()
            proc.wait(timeout=10)
