"""The lock against overlapping batch runs (issue #5, #7).

"Free" and "held" are judged by another process, as a second nightly batch would see the lock:
it tries ``run_lock`` on the same file (:func:`other_process_gets`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys_batch.errors import LockError
from recsys_batch.run.lock import run_lock

HOLD = (
    "import sys, time; from pathlib import Path; from recsys_batch.run.lock import run_lock\n"
    "with run_lock(Path(sys.argv[1])):\n"
    "    print('locked', flush=True); time.sleep(60)\n"
)
PROBE = (
    "import sys; from pathlib import Path\n"
    "from recsys_batch.errors import LockError; from recsys_batch.run.lock import run_lock\n"
    "try:\n"
    "    with run_lock(Path(sys.argv[1])):\n"
    "        print('acquired')\n"
    "except LockError:\n"
    "    print('refused')\n"
)


def other_process_gets(lock: Path) -> str:
    """``"acquired"`` or ``"refused"``: what a second batch process gets on ``lock`` now."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(lock)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def our_record() -> re.Pattern[str]:
    """The whole content of a lock file this process holds: its pid and start time, nothing else."""
    return re.compile(rf"pid {os.getpid()} since \d{{4}}-\d\d-\d\dT\S+")


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds ``tmp_path / "nightly.lock"`` until the test kills it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "nightly.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


class TestRunLock:
    def test_second_holder_refused_with_exit_code_5(self, tmp_path: Path) -> None:
        lock = tmp_path / "nightly.lock"
        with run_lock(lock), pytest.raises(LockError, match="another nightly batch") as info:
            with run_lock(lock):
                pass
        assert info.value.exit_code == 5
        assert f"pid {os.getpid()}" in str(info.value)

    def test_other_process_refused_while_held(self, tmp_path: Path) -> None:
        lock = tmp_path / "nightly.lock"
        with run_lock(lock):
            assert other_process_gets(lock) == "refused"
            assert our_record().fullmatch(lock.read_text())

    def test_refused_while_another_process_holds(
        self, tmp_path: Path, holder: subprocess.Popen[str]
    ) -> None:
        with pytest.raises(LockError, match=f"held by pid {holder.pid} since"):
            with run_lock(tmp_path / "nightly.lock"):
                pytest.fail("took a lock another process holds")

    def test_released_after_block(self, tmp_path: Path) -> None:
        lock = tmp_path / "nightly.lock"
        with run_lock(lock) as path:
            assert path == lock
        assert other_process_gets(lock) == "acquired"

    def test_released_after_exception(self, tmp_path: Path) -> None:
        lock = tmp_path / "nightly.lock"
        with pytest.raises(RuntimeError, match="stage failed"), run_lock(lock):
            raise RuntimeError("stage failed")
        assert other_process_gets(lock) == "acquired"

    def test_killed_holder_leaves_no_stale_lock(
        self, tmp_path: Path, holder: subprocess.Popen[str]
    ) -> None:
        lock = tmp_path / "nightly.lock"
        assert other_process_gets(lock) == "refused"
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
        assert lock.read_text().startswith(f"pid {holder.pid} ")  # the file stays ...
        assert other_process_gets(lock) == "acquired"  # ... but the kernel dropped the lock
        with run_lock(lock):
            assert our_record().fullmatch(lock.read_text())

    def test_stale_file_is_taken_over(self, tmp_path: Path) -> None:
        """A file left by an old run (any content, longer than ours) does not block."""
        lock = tmp_path / "nightly.lock"
        lock.write_text("pid 999999 since 2020-01-01T00:00:00+0000 " + "x" * 300)
        with run_lock(lock):
            assert our_record().fullmatch(lock.read_text())
            assert other_process_gets(lock) == "refused"
        assert other_process_gets(lock) == "acquired"
