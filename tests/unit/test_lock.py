"""The lock against overlapping batch runs (issue #5, #7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys_batch.errors import LockError
from recsys_batch.run.lock import run_lock

HOLD = (
    "import sys, time; from pathlib import Path; from recsys_batch.run.lock import run_lock\n"
    "with run_lock(Path(sys.argv[1])):\n"
    "    print('locked', flush=True); time.sleep(60)\n"
)


class TestRunLock:
    def test_second_holder_refused_with_exit_code_5(self, tmp_path: Path) -> None:
        lock = tmp_path / "nightly.lock"
        with run_lock(lock), pytest.raises(LockError, match="another nightly batch") as info:
            with run_lock(lock):
                pass
        assert info.value.exit_code == 5
        assert f"pid {os.getpid()}" in str(info.value)

    def test_released_after_block(self, tmp_path: Path) -> None:
        lock = tmp_path / "nightly.lock"
        with run_lock(lock):
            pass
        with run_lock(lock):
            pass

    def test_killed_holder_leaves_no_stale_lock(self, tmp_path: Path) -> None:
        lock = tmp_path / "nightly.lock"
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "locked"
            with pytest.raises(LockError):
                with run_lock(lock):
                    pass
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert lock.exists()  # the file stays; the kernel dropped the lock with the process
        deadline = time.monotonic() + 5
        with run_lock(lock):
            assert time.monotonic() < deadline
