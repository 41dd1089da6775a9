"""Run the shard tasks in this process or on a dask.distributed cluster, and publish them.

:func:`publish_shards` opens the version (:func:`recsys_batch.publish.versions.begin_version`)
before the first task and, only after every shard succeeded, writes the popular list and
item attributes, verifies every key and flips ``P:current`` once
(:func:`~recsys_batch.publish.versions.finish_version`). Only a shard whose Redis connection
failed (:data:`~recsys_batch.run.shard_retries.PUBLISH_FAILURES`) is retried,
``scale.shard_retries`` times (HSET is idempotent, so a repeated write is harmless); if it
still fails, :class:`~recsys_batch.run.shard_retries.ShardError` (exit 4) is raised. Nothing
else is retried (issue #29): a ``RecsysError`` keeps its type and exit code (bad data is the
same on every attempt, and a ``PublishError`` has already used ``redis.retries``), and any
other exception is a bug that propagates as it is (exit 1, its traceback with ``--debug``),
dry run or not. Whatever fails, the half-written version is abandoned and nothing flips: the
old version keeps serving.

:class:`LocalExecutor` runs the shards one after another;
:class:`~recsys_batch.run.dask_executor.DaskExecutor` submits them to a scheduler
(``scale.scheduler_address``) or to a ``LocalCluster`` of worker processes it starts. Both
report each finished shard to a :class:`~recsys_batch.run.progress.Progress` (by default the
run's :func:`~recsys_batch.run.progress.current` one, which is silent outside a CLI display).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.errors import EmptyStageError
from recsys_batch.publish import store, versions, writer
from recsys_batch.run import progress as progress_events
from recsys_batch.run import sharding
from recsys_batch.run.dask_executor import DaskExecutor
from recsys_batch.run.shard_retries import run_ends
from recsys_batch.run.shard_task import ShardContext, ShardFn, ShardResult, run_shard

log = logging.getLogger(__name__)

PRICE_FEATURE = "i_price"
"""The item table's median unit price (``item_features.median_price``)."""
PRICE_ATTRIBUTE = "price"
"""The published attribute holding it (``recsys_batch.rules.prepared.PRICE``)."""


class Executor(Protocol):
    """Runs one function per shard and returns the results in shard order."""

    def map_shards(  # noqa: D102
        self,
        fn: ShardFn,
        ctx: ShardContext,
        shards: Sequence[tuple[int, pl.DataFrame]],
        progress: progress_events.Progress | None = None,
    ) -> list[ShardResult]: ...


@dataclass
class LocalExecutor:
    """Shards one after another in this process; a shard whose Redis connection failed is
    retried ``retries`` times (see :func:`~recsys_batch.run.shard_retries.run_ends`)."""

    retries: int = 2

    def map_shards(
        self,
        fn: ShardFn,
        ctx: ShardContext,
        shards: Sequence[tuple[int, pl.DataFrame]],
        progress: progress_events.Progress | None = None,
    ) -> list[ShardResult]:
        """Run ``fn`` on every shard; raise a ``ShardError`` when one keeps failing."""
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
                    ends = run_ends(shard, attempt, self.retries, exc)
                    if ends is exc:
                        raise
                    if ends is not None:
                        raise ends from exc
        return results


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

    @property
    def peak_memory_mb(self) -> float | None:
        """The largest peak resident memory a shard reported: of the process that ran it (a
        Dask worker's, or this one's with the local executor); None without shards."""
        return max((r.peak_memory_mb for r in self.results), default=None)

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
    recsys_batch.run.shard_retries.ShardError
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
