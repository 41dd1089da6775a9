"""Run the shard tasks on a dask.distributed cluster (:class:`DaskExecutor`).

:class:`DaskExecutor` submits the shards to a scheduler (``scale.scheduler_address``) or to a
``LocalCluster`` of worker processes it starts. The context (model, item table, settings and
the *location* of the shard inputs, :func:`for_workers`) is scattered once to every worker;
workers connect to Redis themselves and the driver writes their recommendation files. What a
failed shard ends the run with is :func:`recsys_batch.run.shard_retries.run_ends`, as for
:class:`~recsys_batch.run.executors.LocalExecutor`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.publish import store
from recsys_batch.run import progress as progress_events
from recsys_batch.run import shard_task, sharding
from recsys_batch.run.shard_retries import run_ends, shard_failed
from recsys_batch.run.shard_task import ShardContext, ShardFn, ShardResult, write_recommendations

log = logging.getLogger(__name__)


@dataclass
class DaskExecutor:
    """Shards as tasks on a dask.distributed cluster.

    ``address`` names a running scheduler; None starts a ``LocalCluster`` of ``workers``
    worker processes (``threads_per_worker`` threads each; threads in this process when
    ``processes`` is False) for the duration of :meth:`map_shards`.

    Workers get the context of :func:`for_workers`: the model,
    the per-item table and the small tables, and the *location* of the shard inputs, never
    the transactions themselves; each worker connects to Redis from the settings and hands
    its recommendations back, which the driver writes to ``ctx.output_dir``. ``retries``: the
    driver resubmits a shard that raised a
    :data:`~recsys_batch.run.shard_retries.PUBLISH_FAILURES` error, as
    :class:`~recsys_batch.run.executors.LocalExecutor` reruns it (Dask's own task retries
    would rerun a bug too). A shard whose worker died is rescheduled on another worker by the
    scheduler (``distributed.scheduler.allowed-failures`` times), then fails as a
    :class:`~recsys_batch.run.shard_retries.ShardError`.
    """

    address: str | None = None
    workers: int = 2
    retries: int = 2
    processes: bool = True
    threads_per_worker: int = 1

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """A ``distributed.Client`` on the scheduler or on a fresh LocalCluster."""
        from distributed import Client, LocalCluster  # noqa: PLC0415 - optional at import

        if self.address is not None:
            with Client(self.address, set_as_default=False) as client:
                yield client
            return
        with (
            LocalCluster(
                n_workers=self.workers,
                threads_per_worker=self.threads_per_worker,
                processes=self.processes,
                dashboard_address=":0",  # any free port: never collide with a 8787
                silence_logs=logging.WARNING,
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            yield client

    def shipped(self, ctx: ShardContext) -> ShardContext:
        """The context the tasks get: :func:`for_workers`, unless the workers are
        threads of this process, which may keep in-memory shards (nothing is pickled)."""
        if self.address is None and not self.processes and ctx.shards_dir is None:
            return replace(
                ctx,
                output_dir=None,
                driver_client=None,
                return_recommendations=ctx.output_dir is not None,
            )
        return for_workers(ctx)

    def map_shards(
        self,
        fn: ShardFn,
        ctx: ShardContext,
        shards: Sequence[tuple[int, pl.DataFrame]],
        progress: progress_events.Progress | None = None,
    ) -> list[ShardResult]:
        """Submit every shard, gather in shard order; a
        :class:`~recsys_batch.run.shard_retries.ShardError` if one keeps failing."""
        events = progress or progress_events.current()
        events.shards_started(len(shards))
        run = uuid.uuid4().hex[:8]
        shipped = self.shipped(ctx)
        # Every worker gets the item-level context once; each task its own users' slice of
        # stage 1 (a few KB per user), so no worker holds every user's rows.
        item_level = shard_task.with_stage1(shipped, shard_task.stage1_for_users(shipped, None))
        # That slice is ~26 MB for 5,000 users at 100x by design: Dask's 10 MB "large graph"
        # warning would fire for every shard.
        with _quiet_distributed(), self.client() as client, _large_tasks_expected():
            tasks = _ShardTasks(client, fn, shipped, item_level, dict(shards), run)
            results = []
            try:
                for shard in tasks.users_of:
                    result = self._result(shard, tasks)
                    # A held future keeps its result and its arguments on the worker: each
                    # worker would hold every list it scored until the night ends (#28).
                    tasks.release(shard)
                    results.append(_saved(result, ctx))
                    events.shard_done(shard, result.users)
            finally:
                tasks.cancel()
        return results

    def _result(self, shard: int, tasks: _ShardTasks) -> ShardResult:
        """``shard``'s result; resubmitted while
        :func:`~recsys_batch.run.shard_retries.run_ends` says to retry."""
        from distributed import KilledWorker  # noqa: PLC0415 - optional at import

        for attempt in range(1, self.retries + 2):
            try:
                result: ShardResult = tasks.futures[shard].result()
            except KilledWorker as exc:  # the scheduler already reran it on other workers
                raise shard_failed(shard, attempt, exc) from exc
            except concurrent.futures.CancelledError as exc:
                # Only this executor cancels its tasks, so the scheduler forgot them: the
                # scattered context lost its last copy with a dead worker (the scheduler's
                # memory manager keeps one copy of scattered data, not one per worker).
                if attempt > self.retries:
                    raise shard_failed(shard, attempt, exc) from exc
                log.warning("shard %d: the workers' context was lost, scattering it again", shard)
                tasks.scatter_again()
            except Exception as exc:
                ends = run_ends(shard, attempt, self.retries, exc)
                if ends is exc:
                    raise
                if ends is not None:
                    raise ends from exc
                tasks.submit(shard)
            else:
                return result
        raise AssertionError  # pragma: no cover - the last attempt returns or raises


class _ShardTasks:
    """The shard tasks of one :meth:`DaskExecutor.map_shards` on ``client``, and the
    item-level context they share, scattered to every worker. A resubmitted shard gets a new
    key (``shard-<run>-<shard>-<n>``).
    """

    def __init__(
        self,
        client: Any,
        fn: ShardFn,
        shipped: ShardContext,
        item_level: ShardContext,
        users_of: dict[int, pl.DataFrame],
        run: str,
    ) -> None:
        self.client, self.fn, self.shipped, self.item_level = client, fn, shipped, item_level
        self.users_of, self.run = users_of, run
        self.submitted = dict.fromkeys(users_of, 0)
        self.shared = client.scatter(item_level, broadcast=True, hash=False)
        self.futures: dict[int, Any] = {}
        for shard in users_of:
            self.submit(shard)

    def submit(self, shard: int) -> None:
        """(Re)submit ``shard`` on the current context."""
        self.submitted[shard] += 1
        self.futures[shard] = self.client.submit(
            shard_task.run_sliced,
            self.fn,
            self.shared,
            shard_task.stage1_for_users(self.shipped, self.users_of[shard][C.USER]),
            shard,
            self.users_of[shard],
            key=f"shard-{self.run}-{shard:05d}-{self.submitted[shard]}",
            retries=0,  # Dask would retry any exception: the driver decides (#29)
            pure=False,
        )

    def release(self, shard: int) -> None:
        """Let the cluster forget ``shard``'s task, its result read."""
        self.futures.pop(shard).release()

    def scatter_again(self) -> None:
        """Scatter the context anew; resubmit every shard the scheduler forgot with it."""
        self.shared = self.client.scatter(self.item_level, broadcast=True, hash=False)
        for shard, future in self.futures.items():
            if future.cancelled():
                self.submit(shard)

    def cancel(self) -> None:
        self.client.cancel([*self.futures.values(), self.shared])


def _saved(result: ShardResult, ctx: ShardContext) -> ShardResult:
    """Write a worker's recommendations to ``ctx.output_dir`` as the shard itself would;
    keep them in the result only when they have nowhere else to go (not publishing and no
    ``output_dir``), as :func:`~recsys_batch.run.shard_task.run_shard` does."""
    recs = result.recommendations
    if recs is not None and ctx.output_dir is not None:
        write_recommendations(recs, ctx.output_dir, result.shard)
    if ctx.version is not None or ctx.output_dir is not None:
        result.recommendations = None
    return result


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """distributed's own INFO records kept out of the night's log while it maps the shards,
    unless the root logger is at DEBUG (``--debug``): the in-process scheduler's chatter, and
    the ``CommClosedError`` traceback it logs at INFO when the client closes while it still
    reports to it (every published night, a teardown race inside distributed); its warnings
    and errors still show."""
    import distributed  # noqa: F401, PLC0415 - configures its loggers on import; optional

    logger = logging.getLogger("distributed")
    level = logger.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _large_tasks_expected() -> contextlib.AbstractContextManager[Any]:
    import dask  # noqa: PLC0415 - optional at import

    return dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GB"})


def for_workers(ctx: ShardContext) -> ShardContext:
    """``ctx`` as shipped to Dask workers: no driver client, no in-memory transactions, no
    output folder (the driver writes the files), and settings that do not depend on the
    worker's current directory (:func:`worker_settings`).

    Raises
    ------
    ValueError
        The shard inputs are in memory only (``shards_dir`` is None): pickling them would
        ship the whole data to every worker.
    """
    if ctx.shards_dir is None:
        msg = (
            "a Dask worker reads its shard from shards_dir (sharding.write_shards), "
            "but the context holds the transactions in memory only"
        )
        raise ValueError(msg)
    return replace(
        ctx,
        settings=worker_settings(ctx.settings),
        transactions=None,
        partitions=None,
        shards_dir=sharding.absolute(ctx.shards_dir),
        output_dir=None,
        driver_client=None,
        return_recommendations=ctx.output_dir is not None or ctx.return_recommendations,
    )


def worker_settings(settings: Settings) -> Settings:
    """``settings`` with every path of ``redis`` absolute and the embedded Redis named by its
    socket, so a worker started in another folder connects to the driver's server."""
    redis_cfg = settings.redis
    update: dict[str, Any] = {
        name: Path(value).expanduser().resolve()
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file", "embedded_dir")
        if (value := getattr(redis_cfg, name)) is not None
    }
    if not redis_cfg.url:  # the driver started it already: this only names its socket
        update["url"] = store.resolve_url(redis_cfg)[0]
    return settings.model_copy(update={"redis": redis_cfg.model_copy(update=update)})
