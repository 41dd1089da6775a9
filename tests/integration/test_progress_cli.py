"""The live progress display of ``recsys nightly-batch`` / ``recsys evaluate`` (issue #19).

The real commands run as subprocesses on small synthetic data (:func:`tests.small.small_env`),
once with stderr on a pseudo-terminal (a person at a terminal: the display appears) and once
with stderr on a pipe (cron, CI: the plain log lines, no display, no escape codes).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from tests.small import small_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(tmp_path: Path, redis_url: str, key_prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        env.pop(name, None)
    return {
        **env,
        **small_env(300, 100),
        "TERM": "xterm-256color",
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": key_prefix,
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
    }


def run_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``recsys ARGS`` with stderr on a 120x40 pseudo-terminal: (rc, stdout, terminal)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=child,
    )
    os.close(child)
    chunks: list[bytes] = []

    def drain() -> None:  # the terminal must be read, or the child blocks on a full buffer
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(main)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


def run_on_pipe(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``recsys ARGS`` with stdout and stderr on pipes: (rc, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


NIGHTLY = ["nightly-batch", "--source", "synthetic"]


def test_nightly_on_a_terminal_shows_the_live_display(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    rc, stdout, screen = run_on_terminal(NIGHTLY, _env(tmp_path, redis_url, key_prefix))
    assert rc == 0, screen
    text = ANSI.sub("", screen)
    assert "\x1b[" in screen  # drawn, not just printed
    assert "stages" in text and "6/6" in text  # the stage bar, complete
    assert "shards" in text and "3/3" in text  # three shards of 100 users
    assert "eta" in text
    assert re.search(r"done gate .*passed: precision@5 0\.\d{4}", text), text
    assert "done score_and_publish" in text
    assert "published" in stdout  # the summary line stays on stdout


def test_nightly_on_a_pipe_prints_the_plain_log_lines(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    rc, stdout, stderr = run_on_pipe(NIGHTLY, _env(tmp_path, redis_url, key_prefix))
    assert rc == 0, stderr
    assert "\x1b[" not in stderr
    stages = re.findall(r"recsys_batch\.run\.pipeline: stage (\S+) +rows=", stderr)
    assert stages == [
        "load",
        "prefilter",
        "gate",
        "train",
        "save",
        "score_and_publish",
    ]
    assert "eta" not in stderr and "done gate" not in stderr
    assert "published" in stdout


def test_evaluate_steps_on_a_terminal_and_not_on_a_pipe(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    env = _env(tmp_path, redis_url, key_prefix)
    args = ["evaluate", "--source", "synthetic", "--stage", "candidates"]
    rc, _, screen = run_on_terminal(args, env)
    assert rc == 0, screen
    text = ANSI.sub("", screen)
    assert "done load" in text and "done candidates" in text and "2/2" in text
    rc, stdout, stderr = run_on_pipe(args, env)
    assert rc == 0, stderr
    assert "done load" not in stderr + stdout
    assert "Stage-1 candidate recall" in stdout
