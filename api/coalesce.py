"""Auto-pipelining of the lookups that arrive in the same event-loop turn."""

from __future__ import annotations

import asyncio
from typing import Any

from api.answers import Plan

Read = tuple[bytes, tuple[bytes, ...], bytes, bytes]
"""One user's ``HGET``s: (version prefix ``P:v:V:``, families, bucket suffix ``:N``, field):
the field in the bucket hash of each family (``P:v:V:u:N``, ...), one reply each."""


Job = tuple[
    list[Plan],
    int,
    bool,
    "str | None",
    "tuple[str | None, str | None]",
    list[Read],
    int,
    "asyncio.Future[Any]",
]
"""One lookup's share of a round trip: (plans, k, explain, the live version it expects or
None, the A/B state it expects, its reads, how many replies they get, its future)."""


class Coalescer:
    """Auto-pipelining: lookups issued in the same event-loop turn share one round trip.

    Under concurrency, requests whose bytes arrived together reach their Redis read in the
    same loop iteration; instead of one round trip each they share one pipeline (their
    ``HGET``s and a single ``GET`` of the live pointer and ``HMGET`` of the A/B state),
    scheduled with ``call_soon`` so a lone request waits only for the end of the current
    iteration. Each job is answered from the version it names (see :meth:`Lookup._run`).
    """

    def __init__(self, run: Any) -> None:
        self._run = run
        self._pending: list[Job] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    def add(self, job: Job) -> None:
        """Queue ``job`` for the round trip sent at the end of this loop iteration."""
        self._pending.append(job)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self.batches += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
