"""Dask worker preload for ``test_dask_cluster``: kill this worker when a shard task starts.

``dask worker --preload <this file>`` installs :class:`KillOnShardStart` when
``RECSYS_TEST_FAULTS`` names a folder. It appends ``<pid> <key>`` to ``<folder>/started``
for every shard task a worker starts (the test's proof that worker processes ran them), and
kills nothing until the test writes
``<folder>/arm``; then the first worker to start a shard task (key ``shard-...``) creates
``<folder>/fired`` (exclusively, so only one worker ever does) and SIGKILLs its own process:
the task dies mid-shard, exactly once per armed run, whichever worker got it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin

FAULTS_ENV = "RECSYS_TEST_FAULTS"


class KillOnShardStart(WorkerPlugin):
    """SIGKILL this worker process when an armed folder says so and no worker fired yet."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or not str(key).startswith("shard-"):
            return
        with (self.folder / "started").open("a") as started:
            started.write(f"{os.getpid()} {key}\n")
        if not (self.folder / "arm").exists():
            return
        try:
            with (self.folder / "fired").open("x") as marker:
                marker.write(f"{os.getpid()} {key}\n")
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


async def dask_setup(worker: Worker) -> None:
    folder = os.environ.get(FAULTS_ENV)
    if folder:
        await worker.plugin_add(KillOnShardStart(Path(folder)), name="kill-on-shard-start")
