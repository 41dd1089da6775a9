"""Helpers of the fault and security tests: the real ``recsys nightly-batch`` on small data.

Every batch these tests run is the shipped command with the real two-stage model
(``tests.small.small_env``: 300 synthetic users, tiny ALS and LightGBM, shards of 100 users),
either in this process through Typer's ``CliRunner`` (:func:`nightly`) or as a subprocess
that a test can kill (:class:`BatchProcess`). The rest reads Redis back (the live version,
a snapshot of every key and value of a version, the versions that still own keys), starts
a redis-server of one test (:func:`own_redis`) or a locked-down one with TLS and ACL users
(:func:`tls_server`), and makes the runs disk fail (:func:`failing_disk`).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.config import RedisConfig
from recsys_batch.publish import keys, status
from tests.conftest import free_port, start_redis_server
from tests.nightly import stored_values
from tests.small import small_env

ROOT = Path(__file__).resolve().parents[2]
USERS = 300
"""Synthetic users of every batch here (three shards of 100)."""
runner = CliRunner()


def batch_env(tmp_path: Path, url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment of one test's batches: small model, its Redis and prefix, its run folder.

    Short Redis timeouts and one retry, so a Redis fault ends a run in seconds.
    """
    return {
        **small_env(users=USERS, shard_users=100),
        "REDIS_URL": url,
        "RECSYS_REDIS__KEY_PREFIX": prefix,
        "RECSYS_REDIS__RETRIES": "1",
        "RECSYS_REDIS__RETRY_BACKOFF_SECONDS": "0.01",
        "RECSYS_REDIS__SOCKET_TIMEOUT_SECONDS": "0.5",
        "RECSYS_REDIS__CONNECT_TIMEOUT_SECONDS": "0.5",
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
        **extra,
    }


def frozen_redis_bound(cfg: RedisConfig) -> float:
    """Seconds a Redis frozen mid-publish can hold ``recsys nightly-batch`` (local executor),
    counting every Redis round trip the run makes after the freeze (docs/operations.md).

    Each attempt of a round trip waits at most two socket timeouts ``T``: one to send (the
    kernel's buffer takes a chunk; a full one waits at most ``T``) or to reconnect (the
    handshake waits on the same timeout), one for the reply. After the freeze the run makes:

    - the failing user write: ``redis.retries + 1`` attempts, with the backoff between them
      (``B, 2B, 4B, ...``); a ``PublishError`` is not retried again at the shard level;
    - the removal of the half-written version (``versions.abandon_version``): one attempt;
    - the run summary pushed to ``P:runs`` (``run_log.push_summary``): one attempt.
    """
    attempts = (cfg.retries + 1) + 1 + 1
    backoff = cfg.retry_backoff_seconds * (2**cfg.retries - 1)
    return attempts * 2 * cfg.socket_timeout_seconds + backoff


def invoke(args: list[str], env: dict[str, str]) -> Any:
    """Run the CLI in this process; its log lines (stderr) are part of ``result.output``."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return runner.invoke(app, args, env=env)
    finally:  # the CLI's handler writes to the runner's stream, closed after the call
        root.handlers[:] = handlers
        root.setLevel(level)


def nightly(env: dict[str, str], *args: str) -> Any:
    """``recsys nightly-batch --source synthetic ARGS`` in this process."""
    return invoke(["nightly-batch", "--source", "synthetic", *args], env)


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


# --- reading versions back ------------------------------------------------------------------


def text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def live(client: redis.Redis, prefix: str) -> str | None:
    """The version ``P:current`` names."""
    return text(client.get(keys.current_key(prefix)))


def version_keys(client: redis.Redis, prefix: str, version: str) -> list[bytes]:
    """Every key of ``version`` (``P:v:V:*``)."""
    pattern = keys.version_prefix(version, prefix) + "*"
    return list(client.scan_iter(match=pattern, count=10_000))


def users_written(client: redis.Redis, prefix: str, version: str) -> int:
    """Users stored in ``version`` so far: fields of its ``u`` bucket hashes (format 2)."""
    head = keys.version_prefix(version, prefix) + "u:"
    return sum(
        int(client.hlen(k))
        for k in version_keys(client, prefix, version)
        if k.decode().startswith(head)
    )


def versions_with_keys(client: redis.Redis, prefix: str) -> set[str]:
    """Versions that still own at least one key (``P:v:V:...``)."""
    found = set()
    for name in client.scan_iter(match=f"{prefix}:v:*", count=10_000):
        found.add(name.decode().split(":")[2])
    return found


def snapshot(client: redis.Redis, prefix: str, version: str) -> dict[bytes, Any]:
    """Every key of ``version`` and its value, byte for byte (strings and hashes)."""
    values: dict[bytes, Any] = {}
    for name in version_keys(client, prefix, version):
        kind = client.type(name)
        if kind == b"string":
            values[name] = client.get(name)
        elif kind == b"hash":
            values[name] = client.hgetall(name)
        else:  # a version holds nothing else; fail loudly if the format grows
            msg = f"unexpected {kind!r} key {name!r} in version {version}"
            raise AssertionError(msg)
    return values


def assert_live_is_whole(client: redis.Redis, prefix: str) -> str:
    """``P:current`` names a complete version whose every user key exists; return it."""
    version = live(client, prefix)
    assert version is not None
    meta = {
        k.decode(): v.decode() for k, v in client.hgetall(keys.meta_key(version, prefix)).items()
    }
    assert meta["state"] == keys.STATE_COMPLETE
    users = status.version_user_ids(client, version, RedisConfig(key_prefix=prefix))
    assert len(users) == int(meta["users"]) == USERS
    assert len(stored_values(client, version, prefix, users)) == USERS
    assert client.get(keys.popular_key(version, prefix))
    return version


def a_user(client: redis.Redis, prefix: str, version: str, k: int = 5) -> tuple[int, list[int]]:
    """One user of ``version`` and the first ``k`` items published for them (what the API
    answers by default), best first."""
    user = status.version_user_ids(client, version, RedisConfig(key_prefix=prefix))[0]
    return user, stored_values(client, version, prefix, [user])[user][:k]


# --- a redis-server of one test -------------------------------------------------------------

AOF = ("--appendonly", "yes", "--appendfsync", "always")
"""Every applied write is on disk before its reply: what a SIGKILL cannot undo."""


class OwnRedis:
    """A redis-server of this test only, which the test may stop, kill or restart."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.extra = extra
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc, self.port = start_redis_server(workdir, *extra)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

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


# --- a locked-down redis-server: TLS, a password, ACL users (test_security) ------------------

ADMIN_PASSWORD = "admin-S3cret-pw"
BATCH_PASSWORD = "batch-S3cret-pw"
API_PASSWORD = "api-S3cret-pw"
SECRETS = (ADMIN_PASSWORD, BATCH_PASSWORD, API_PASSWORD)

BATCH_COMMANDS = (
    "ping get set zadd zrange zrem hset hsetnx hget hmget hgetall expire exists unlink scan "
    "watch unwatch multi exec discard hlen lpush ltrim"
)
"""What the batch is granted here: exactly docs/security.md's line (pinned by
``test_docs_grant_the_commands_tested_here``)."""
API_COMMANDS = "get mget hget hmget hgetall ping lrange"


def acl_user(name: str, password: str, commands: str) -> list[str]:
    rules = ["resetkeys", "~sec*", "resetchannels", "-@all", *(f"+{c}" for c in commands.split())]
    return ["--user", name, "on", f">{password}", *rules]


@dataclass(frozen=True)
class SecureRedis:
    plain_port: int
    tls_port: int
    ca_file: Path
    client_cert: Path
    client_key: Path

    def url(self, user: str, password: str, *, tls: bool = True) -> str:
        scheme, port = ("rediss", self.tls_port) if tls else ("redis", self.plain_port)
        return f"{scheme}://{user}:{password}@127.0.0.1:{port}/0"

    def admin(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.plain_port, password=ADMIN_PASSWORD)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str = "recsys-test-ca") -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "1", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip


def make_certificates(folder: Path) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    make_ca(folder)
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", "san.cnf",
                cwd=folder)  # fmt: skip


def tls_server_args(folder: Path, tls_port: int, auth_clients: str) -> list[str]:
    """redis-server options: TLS on ``tls_port``, a password and the batch/api ACL users."""
    return [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(folder / "server.crt"),
        "--tls-key-file", str(folder / "server.key"),
        "--tls-ca-cert-file", str(folder / "ca.crt"),
        "--tls-auth-clients", auth_clients,
        "--requirepass", ADMIN_PASSWORD,
        *acl_user("batch", BATCH_PASSWORD, BATCH_COMMANDS),
        *acl_user("api", API_PASSWORD, API_COMMANDS),
    ]  # fmt: skip


@contextlib.contextmanager
def tls_server(certs: Path, workdir: Path, auth_clients: str = "optional") -> Iterator[SecureRedis]:
    """A redis-server with TLS and the ACL users; skips when this build has no TLS."""
    proc = port = tls_port = None
    why = ""
    for _attempt in range(3):  # a freshly picked free port can be taken again before use
        tls_port = free_port()
        try:
            proc, port = start_redis_server(
                workdir, *tls_server_args(certs, tls_port, auth_clients)
            )
            break
        except RuntimeError as exc:
            why = str(exc)
    if proc is None or port is None or tls_port is None:
        pytest.skip(f"this redis-server does not start with --tls-port: {why}")
    try:
        yield SecureRedis(port, tls_port, certs / "ca.crt", certs / "client.crt",
                          certs / "client.key")  # fmt: skip
    finally:
        proc.kill()
        proc.wait(timeout=10)


# --- the runs disk read-only or full --------------------------------------------------------


@contextlib.contextmanager
def failing_disk(under: Path, code: int) -> Iterator[None]:
    """Every file or directory creation under ``under`` fails with ``code`` (EROFS, ENOSPC).

    The suite runs as root on CI, where a read-only mode bit is not enforced, so the
    operating system's answer is simulated at the layers Python writes through: ``os.mkdir``
    and ``os.open`` (pathlib, tempfile) and ``open`` (``Path.write_text``, pickles).
    A library that opens files in C is out of reach; the next Python write fails.
    """
    real_mkdir, real_os_open, real_open = os.mkdir, os.open, io.open
    prefix = str(under)

    def refuse(path: Any) -> None:
        if isinstance(path, str | os.PathLike) and os.fspath(path).startswith(prefix):
            raise OSError(code, os.strerror(code), os.fspath(path))

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        refuse(path)
        real_mkdir(path, *args, **kwargs)

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(flag in mode for flag in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    os.mkdir, os.open, io.open, builtins.open = mkdir, os_open, open_, open_
    try:
        yield
    finally:
        os.mkdir, os.open, io.open, builtins.open = real_mkdir, real_os_open, real_open, real_open


# --- the batch as a process that a test can kill --------------------------------------------

PAUSE_HOOK = '''\
"""Test hook (tests/integration/faults_helpers.py): pause ``recsys nightly-batch``.

RECSYS_TEST_PAUSE_AT names where: a stage of ``pipeline.STAGES`` (paused as it starts, just
after the previous stage's log line), ``mid-publish`` (in the second shard's user write, the
first shard written) or ``after-flip`` (the new version live, its cleanup not run yet).
"""
import os
import sys
import time

AT = os.environ.get("RECSYS_TEST_PAUSE_AT")


def pause():
    print(f"PAUSED {AT}", file=sys.stderr, flush=True)
    time.sleep(600)


if AT:
    from recsys_batch.publish import versions, writer
    from recsys_batch.run import pipeline

    if AT == "mid-publish":
        write_users, calls = writer.write_users, []

        def paused_write(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                pause()
            return write_users(*args, **kwargs)

        writer.write_users = paused_write
    elif AT == "after-flip":
        flip_pointer = versions.flip_pointer

        def paused_flip(*args, **kwargs):
            old = flip_pointer(*args, **kwargs)
            pause()
            return old

        versions.flip_pointer = paused_flip
    elif AT in dict(pipeline.STAGES):

        def paused_stage(stage):
            def run(state):
                pause()
                return stage(state)

            return run

        pipeline.STAGES[:] = [
            (name, paused_stage(stage) if name == AT else stage)
            for name, stage in pipeline.STAGES
        ]
    else:
        raise SystemExit(f"RECSYS_TEST_PAUSE_AT={AT}: no such pause point")
'''


class BatchProcess:
    """``python -m cli.main nightly-batch`` in a subprocess, its output read by a thread.

    With ``pause_at`` the :data:`PAUSE_HOOK` (a ``sitecustomize`` on ``PYTHONPATH``) holds
    the batch at that point, so a test can look at Redis and the lock, then kill it there.
    """

    def __init__(
        self, env: dict[str, str], hook_dir: Path, pause_at: str | None = None, *args: str
    ) -> None:
        hook_dir.mkdir(parents=True, exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(PAUSE_HOOK)
        child_env = {**os.environ, **env, "PYTHONPATH": f"{hook_dir}{os.pathsep}{ROOT}"}
        child_env.pop("RECSYS_TEST_PAUSE_AT", None)
        if pause_at is not None:
            child_env["RECSYS_TEST_PAUSE_AT"] = pause_at
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "nightly-batch", "--source", "synthetic", *args],
            cwd=ROOT,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._events: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._events.put(line)
        self._events.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stages_logged(self) -> list[str]:
        """Stages whose ``stage <name> rows=...`` line the runner logged."""
        found = []
        for line in self.lines:
            words = line.split(": ", 1)[-1].split()
            if len(words) > 2 and words[0] == "stage" and words[2].startswith("rows="):
                found.append(words[1])
        return found

    def wait_paused(self, timeout: float = 120) -> None:
        """Block until the hook says PAUSED; fail if the batch exits or takes too long."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._events.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self.proc.wait(timeout=10)
                tail = "\n".join(self.lines[-30:])
                msg = f"the batch exited ({self.proc.returncode}) before pausing:\n{tail}"
                raise AssertionError(msg)
            if line.startswith("PAUSED "):
                return
        self.kill(signal.SIGKILL)
        msg = "the batch did not reach its pause point in time:\n" + "\n".join(self.lines[-30:])
        raise AssertionError(msg)

    def kill(self, sig: int) -> int:
        """Send ``sig``, wait for the exit; return the exit status (``-sig`` when killed)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        return self.proc.returncode

    def wait(self, timeout: float = 120) -> int:
        """Wait for the batch to exit by itself; return its exit status."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.proc.returncode

    def output(self) -> str:
        return "\n".join(self.lines)
