"""A lock against overlapping batch runs (issue #5).

``fcntl.flock`` on ``settings.run.lock_file``: the kernel releases it when the process exits
or dies (even on ``kill -9``), so a crash never leaves a stale lock behind. The file keeps the
holder's pid and start time for the error message; its presence alone means nothing.

The lock is per machine (per filesystem). Two machines publishing to one Redis need an
external scheduler guarantee (a Kubernetes CronJob with ``concurrencyPolicy: Forbid``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from recsys_batch.errors import ConfigError, LockError


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[Path]:
    """Hold an exclusive, non-blocking lock on ``path`` for the duration of the block.

    Raises
    ------
    LockError
        Another process holds the lock (exit code 5); the message names its pid.
    ConfigError
        The lock file cannot be created (unwritable directory).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        msg = f"cannot create the lock file {path}: {exc} (fix: set RECSYS_RUN__LOCK_FILE)"
        raise ConfigError(msg) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            msg = (
                f"another nightly batch is running (lock {path} held by {holder}); "
                "refusing to start an overlapping run"
            )
            raise LockError(msg) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
