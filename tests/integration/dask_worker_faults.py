"""Dask worker preload for ``test_dask_cluster``: kill a worker after its shard's first write.

``dask worker --preload <this file>`` installs :class:`KillAfterFirstWrite` when
``RECSYS_TEST_FAULTS`` names a folder. It appends ``<pid> <key>`` to ``<folder>/started``
for every shard task a worker starts (the test's proof of which worker processes ran what),
and wraps this process's ``writer.write_users``, the one writer of a shard's users. It kills
nothing until the test writes ``<folder>/arm``; then the first worker whose shard task has
written its users to Redis creates ``<folder>/fired`` (exclusively, so only one worker ever
does) with ``<pid> <key> <version>`` and SIGKILLs its own process: the shard's keys are in
Redis, its result never reaches the driver, and the scheduler must run it again elsewhere.
The test removes ``fired`` before it writes ``arm``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

FAULTS_ENV = "RECSYS_TEST_FAULTS"


class KillAfterFirstWrite(WorkerPlugin):
    """Log shard tasks as they start; once armed, SIGKILL the first worker that wrote."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shard_key = ""
        """The shard task this worker runs (``--nthreads 1``: one at a time)."""

    def setup(self, worker: Worker) -> None:
        from recsys_batch.publish import writer  # noqa: PLC0415 - the worker's own copy

        write_users = writer.write_users

        def write_then_maybe_die(client: Any, version: str, *args: Any, **kwargs: Any) -> Any:
            written = write_users(client, version, *args, **kwargs)
            if (self.folder / "arm").exists():
                self.fire(version)
            return written

        writer.write_users = write_then_maybe_die

    def fire(self, version: str) -> None:
        try:
            with (self.folder / "fired").open("x") as marker:
                marker.write(f"{os.getpid()} {self.shard_key} {version}\n")
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or not str(key).startswith("shard-"):
            return
        self.shard_key = str(key)
        with (self.folder / "started").open("a") as started:
            started.write(f"{os.getpid()} {key}\n")


async def dask_setup(worker: Worker) -> None:
    folder = os.environ.get(FAULTS_ENV)
    if folder:
        await worker.plugin_add(KillAfterFirstWrite(Path(folder)), name="kill-after-first-write")
