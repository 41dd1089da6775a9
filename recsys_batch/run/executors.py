"""Run the shard tasks in this process or on a dask.distributed cluster, and publish them.

:func:`publish_shards` opens the version (:func:`recsys_batch.publish.versions.begin_version`)
before the first task and, only after every shard succeeded, writes the popular list and
item attributes, verifies every key and flips ``P:current`` once
(:func:`~recsys_batch.publish.versions.finish_version`). Only a shard whose Redis connection
failed (:data:`PUBLISH_FAILURES`) is retried, ``scale.shard_retries`` times (HSET is
idempotent, so a repeated write is harmless); if it still fails, :class:`ShardError` (exit 4)
is raised. Nothing else is retried (issue #29): a ``RecsysError`` keeps its type and exit
code (bad data is the same on every attempt, and a ``PublishError`` has already used
``redis.retries``), and any other exception is a bug that propagates as it is (exit 1, its
traceback with ``--debug``), dry run or not. Whatever fails, the half-written version is
abandoned and nothing flips: the old version keeps serving.

:class:`LocalExecutor` runs the shards one after another; :class:`DaskExecutor` submits
them to a scheduler (``scale.scheduler_address``) or to a ``LocalCluster`` of worker
processes it starts. The context (model, item table, settings and the *location* of the shard
inputs, :func:`for_workers`) is scattered once to every worker;
workers connect to Redis themselves and the driver writes their recommendation files.
Both report each finished shard to a :class:`~recsys_batch.run.progress.Progress` (by
default the run's :func:`~recsys_batch.run.progress.current` one, which is silent outside a
CLI display).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, overload

import polars as pl
import redis

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.errors import EmptyStageError, PublishError, RecsysError
from recsys_batch.publish import store, versions, writer
from recsys_batch.run import progress as progress_events
from recsys_batch.run import shard_task, sharding
from recsys_batch.run.shard_task import (
    ShardContext,
    ShardFn,
    ShardResult,
    run_shard,
    write_recommendations,
)

log = logging.getLogger(__name__)

PRICE_FEATURE = "i_price"
"""The item table's median unit price (``item_features.median_price``)."""
PRICE_ATTRIBUTE = "price"
"""The published attribute holding it (``recsys_batch.rules.engine.PRICE``)."""


class ShardError(PublishError):
    """A shard still failed after its retries; nothing was flipped (exit 4, as a publish)."""


class Executor(Protocol):
    """Runs one function per shard and returns the results in shard order."""

    def map_shards(  # noqa: D102
        self,
        fn: ShardFn,
        ctx: ShardContext,
        shards: Sequence[tuple[int, pl.DataFrame]],
        progress: progress_events.Progress | None = None,
    ) -> list[ShardResult]: ...


PUBLISH_FAILURES: tuple[type[BaseException], ...] = (redis.RedisError, *store.RETRYABLE)
"""What a shard may raise that is a failed publish, worth another attempt of the shard: a
Redis error that escaped the writer's own retries, or a broken connection or timeout."""


def _run_ends(shard: int, attempt: int, retries: int, exc: BaseException) -> BaseException | None:
    """What ``exc``, raised by attempt ``attempt`` of ``shard``, ends the run with; None to retry.

    A ``RecsysError`` ends it at once with its own type and exit code: bad data or config is
    the same on every attempt, and a ``PublishError`` means Redis failed after its own
    retries (``redis.retries``): retrying the shard on top would multiply the time a frozen
    Redis holds the batch. A :data:`PUBLISH_FAILURES` error is retried ``retries`` times,
    then ends the run as a :class:`ShardError`. Anything else is a bug and ends it as it is.
    """
    if isinstance(exc, RecsysError) or not isinstance(exc, PUBLISH_FAILURES):
        return exc
    if attempt > retries:
        return _failed(shard, attempt, exc)
    log.warning("shard %d failed (%s: %s), retrying", shard, type(exc).__name__, exc)
    return None


def _failed(shard: int, attempts: int, exc: BaseException) -> ShardError:
    msg = (
        f"shard {shard} failed after {attempts} attempt(s): {type(exc).__name__}: {exc}; "
        "nothing was flipped, the live version keeps serving"
    )
    return ShardError(msg)


@dataclass
class LocalExecutor:
    """Shards one after another in this process; a shard whose Redis connection failed is
    retried ``retries`` times (see :func:`_run_ends`)."""

    retries: int = 2

    def map_shards(
        self,
        fn: ShardFn,
        ctx: ShardContext,
        shards: Sequence[tuple[int, pl.DataFrame]],
        progress: progress_events.Progress | None = None,
    ) -> list[ShardResult]:
        """Run ``fn`` on every shard; raise :class:`ShardError` when one keeps failing."""
        events = progress or progress_events.current()
        events.shards_started(len(shards))
        results = []
        for shard, users in shards:
            for attempt in range(1, self.retries + 2):
                try:
                    results.append(fn(ctx, shard, users))
                    events.shard_done(shard, results[-1].users)
                    break
                except Exception as exc:
                    ends = _run_ends(shard, attempt, self.retries, exc)
                    if ends is exc:
                        raise
                    if ends is not None:
                        raise ends from exc
        return results


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
    driver resubmits a shard that raised a :data:`PUBLISH_FAILURES` error, as
    :class:`LocalExecutor` reruns it (Dask's own task retries would rerun a bug too). A shard
    whose worker died is rescheduled on another worker by the scheduler
    (``distributed.scheduler.allowed-failures`` times), then fails as a :class:`ShardError`.
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
        """Submit every shard, gather in shard order; :class:`ShardError` if one keeps failing."""
        events = progress or progress_events.current()
        events.shards_started(len(shards))
        run = uuid.uuid4().hex[:8]
        shipped = self.shipped(ctx)
        # Every worker gets the item-level context once; each task its own users' slice of
        # stage 1 (a few KB per user), so no worker holds every user's rows.
        item_level = shard_task.with_stage1(shipped, shard_task.stage1_for_users(shipped, None))
        # That slice is ~26 MB for 5,000 users at 100x by design: Dask's 10 MB "large graph"
        # warning would fire for every shard.
        with self.client() as client, _large_tasks_expected():
            shared = client.scatter(item_level, broadcast=True, hash=False)
            users_of = dict(shards)

            def submit(shard: int, attempt: int) -> Any:
                return client.submit(
                    shard_task.run_sliced,
                    fn,
                    shared,
                    shard_task.stage1_for_users(shipped, users_of[shard][C.USER]),
                    shard,
                    users_of[shard],
                    key=f"shard-{run}-{shard:05d}-{attempt}",
                    retries=0,  # Dask would retry any exception: the driver decides (#29)
                    pure=False,
                )

            futures = {shard: submit(shard, 1) for shard in users_of}
            results = []
            try:
                for shard in users_of:
                    result = self._result(shard, futures, submit)
                    results.append(_saved(result, ctx))
                    events.shard_done(shard, result.users)
            finally:
                client.cancel(list(futures.values()))
        return results

    def _result(self, shard: int, futures: dict[int, Any], submit: Any) -> ShardResult:
        """``shard``'s result; resubmitted (``futures[shard]`` replaced) while
        :func:`_run_ends` says to retry."""
        from distributed import KilledWorker  # noqa: PLC0415 - optional at import

        for attempt in range(1, self.retries + 2):
            try:
                result: ShardResult = futures[shard].result()
            except KilledWorker as exc:  # the scheduler already reran it on other workers
                raise _failed(shard, attempt, exc) from exc
            except Exception as exc:
                ends = _run_ends(shard, attempt, self.retries, exc)
                if ends is exc:
                    raise
                if ends is not None:
                    raise ends from exc
                futures[shard] = submit(shard, attempt + 1)
            else:
                return result
        raise AssertionError  # pragma: no cover - the last attempt returns or raises


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


def _large_tasks_expected() -> contextlib.AbstractContextManager[Any]:
    import dask  # noqa: PLC0415 - optional at import

    return dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GB"})


def make_executor(settings: Settings) -> Executor:
    """The executor ``settings.scale`` asks for."""
    cfg = settings.scale
    if cfg.executor == "dask":
        return DaskExecutor(
            cfg.scheduler_address,
            cfg.dask_workers,
            cfg.shard_retries,
            threads_per_worker=cfg.dask_threads_per_worker,
        )
    return LocalExecutor(cfg.shard_retries)


@dataclass
class ShardedRun:
    """What :func:`score_shards` / :func:`publish_shards` did."""

    results: list[ShardResult]
    version: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def users(self) -> int:
        """Users with recommendations, over all shards."""
        return sum(r.users for r in self.results)

    def recommendations(self) -> pl.DataFrame:
        """All shards' recommendations (score-only runs), sorted by user and rank."""
        parts = [r.recommendations for r in self.results if r.recommendations is not None]
        if not parts:
            return pl.DataFrame(schema=C.RECOMMENDATIONS)
        return pl.concat(parts).sort(C.USER, C.RANK)


def plan_shards(user_ids: pl.LazyFrame, n_shards: int) -> list[tuple[int, pl.DataFrame]]:
    """``(shard, users)`` for every non-empty shard, from a list of every user."""
    return [
        (s, part) for s, part in enumerate(sharding.user_shards(user_ids, n_shards)) if part.height
    ]


class ContextShards(Sequence[tuple[int, pl.DataFrame]]):
    """``(shard, users)`` for every non-empty shard of ``ctx``, each shard's users read from
    its own rows only when it is taken (``ShardContext.shard_users``): the driver holds one
    shard's users at a time, never a list of every customer (issue #28). The same shards and
    users as :func:`plan_shards` of every user."""

    def __init__(self, ctx: ShardContext) -> None:
        self.ctx = ctx
        self.shards = [s for s in range(ctx.n_shards) if ctx.shard_has_rows(s)]

    def __len__(self) -> int:
        return len(self.shards)

    @overload
    def __getitem__(self, index: int) -> tuple[int, pl.DataFrame]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[int, pl.DataFrame]]: ...

    def __getitem__(
        self, index: int | slice
    ) -> tuple[int, pl.DataFrame] | Sequence[tuple[int, pl.DataFrame]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        shard = self.shards[index]
        return shard, self.ctx.shard_users(shard)


def shard_plan(
    ctx: ShardContext, user_ids: pl.LazyFrame | None
) -> Sequence[tuple[int, pl.DataFrame]]:
    """The shards to run: of ``user_ids`` when given, else every user of ``ctx``'s rows
    (:class:`ContextShards`, what the nightly batch runs)."""
    return ContextShards(ctx) if user_ids is None else plan_shards(user_ids, ctx.n_shards)


def score_shards(
    ctx: ShardContext,
    user_ids: pl.LazyFrame | None,
    executor: Executor,
    fn: ShardFn = run_shard,
) -> ShardedRun:
    """Recommendations of ``user_ids`` (None: every user of the context's rows), shard by
    shard, without touching Redis."""
    ctx.version = None
    started = time.perf_counter()
    results = executor.map_shards(fn, ctx, shard_plan(ctx, user_ids))
    return ShardedRun(results, None, {"shards": time.perf_counter() - started})


def publish_shards(
    ctx: ShardContext,
    user_ids: pl.LazyFrame | None,
    executor: Executor,
    client: store.Client,
    popular: list[int],
    meta: dict[str, Any],
    *,
    fn: ShardFn = run_shard,
) -> ShardedRun:
    """Score and write every shard of ``user_ids`` (None: every user of the context's
    rows) into one new version, then flip once.

    Raises
    ------
    ShardError
        A shard failed after its retries: the version is removed, nothing flipped.
    PublishError
        Redis failed while opening or finishing the version (nothing flipped).
    """
    settings = ctx.settings
    shards = shard_plan(ctx, user_ids)
    version = versions.begin_version(client, meta, settings.redis)
    ctx.version = version
    started = time.perf_counter()
    try:
        results = executor.map_shards(fn, ctx, shards)
    except BaseException:
        versions.abandon_version(client, version, settings.redis)
        raise
    finally:
        ctx.version = None
    seconds = {"shards": time.perf_counter() - started}
    started = time.perf_counter()
    served = sorted({i for r in results for i in r.items} | set(popular))
    items_attrs = _item_attributes(ctx.items, served, ctx.item_table)
    written = sum((r.written for r in results if r.written is not None), writer.Written())
    if written.users == 0:
        versions.abandon_version(client, version, settings.redis)
        msg = (
            "stage 'score_and_publish' produced zero recommendations; refusing to publish an "
            "empty version"
        )
        raise EmptyStageError(msg, fix="check the input data and the prefilter settings")
    try:
        old = versions.finish_version(
            client, version, written, popular, items_attrs, settings.redis
        )
    except BaseException:
        versions.abandon_version(client, version, settings.redis)
        raise
    seconds["finish"] = time.perf_counter() - started
    log.info(
        "published version %s from %d shard(s): %d users (previous: %s)",
        version,
        len(results),
        sum(r.users for r in results),
        old,
    )
    return ShardedRun(results, version, seconds)


def _item_attributes(
    items: pl.DataFrame | None, served: list[int], item_table: pl.DataFrame | None = None
) -> pl.DataFrame | None:
    """The published attributes of the ``served`` items: the item table's descriptive
    columns and ``price``, the median unit price the item features computed (``i_price`` of
    ``item_table``, over all users' lines before the scoring cut; the rules' ``price_min`` /
    ``price_max`` read it). None without an item table (nothing to describe)."""
    if items is None:
        return None
    available = [c for c in C.ITEM_ATTRIBUTES if c in items.columns]
    found = (
        items.select(C.ITEM, *available)
        .filter(pl.col(C.ITEM).is_in(pl.Series(served, dtype=pl.Int64).implode()))
        .unique(C.ITEM)
    )
    if item_table is None or PRICE_FEATURE not in item_table.columns:
        return found
    prices = item_table.select(
        pl.col(C.ITEM).cast(found.schema[C.ITEM]),
        pl.col(PRICE_FEATURE).round(4).alias(PRICE_ATTRIBUTE),  # cents, without float noise
    ).unique(C.ITEM)
    return found.join(prices, on=C.ITEM, how="left")


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
