"""The work of one user shard: candidates, features, scores, top k, and its Redis write.

The nightly batch trains once, on one node, then splits the users into shards by a stable
hash of ``user_id`` (:mod:`recsys_batch.run.sharding`). One shard's task (:func:`run_shard`):

1. read the shard's transactions (in memory, or its own parquet files written by
   :func:`recsys_batch.run.sharding.write_shards`);
2. stage-1 candidates with the trained model (its slice for the shard's users; users its
   fit did not see, ``scale.stage1_users``, folded in here from the shard's lines, on the
   worker), stage-2 features as of the scoring cut;
3. LightGBM scores, the top ``publish.top_n`` per user and the reason of each item, and
   the new-items lists (#26; in a run of one shard on a thread beside steps 2-3);
4. (publishing) write the shard's users into the new Redis version with
   :func:`recsys_batch.publish.writer.write_users`, which counts them back.

Features of a user depend on that user's purchases only, except the item features
(popularity over all users) and the reference day (the newest purchase before the cut). A
shard therefore gets its users' rows plus one sentinel row carrying the global newest day,
and the item features are computed once on the driver
(:func:`recsys_batch.run.shard_context.build_context`) over all transactions and used in
place of shard-local ones: a shard's cost is proportional to its users, and its output is the
same as scoring everybody at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import polars as pl

from recsys_batch.config import RedisConfig, Settings
from recsys_batch.data import columns as C
from recsys_batch.errors import PublishError, RecsysError
from recsys_batch.model import split
from recsys_batch.model.plan_features import PlanTables
from recsys_batch.publish import keys, store, writer
from recsys_batch.run import beside_gate, sharding

if TYPE_CHECKING:
    from recsys_batch.model.two_stage import ModelData

log = logging.getLogger(__name__)

T = TypeVar("T")

SENTINEL_USER = -1
"""User id of the row that carries the global reference day into a shard (never scored)."""


@dataclass
class ShardContext:
    """Everything a shard task needs; built once by the driver and shipped to workers."""

    model: Any
    """``two_stage.TrainedTwoStage`` (its ``stage1_for_scoring`` and ``ranker``)."""
    catalogue_items: pl.DataFrame
    """``item_id`` of the catalogue, placeholder excluded."""
    item_table: pl.DataFrame
    """Item features (``i_*``) over all users' transactions as of the scoring cut."""
    reference_rows: pl.DataFrame
    """One transaction of the newest day before the cut, with ``user_id = SENTINEL_USER``."""
    settings: Settings
    n_shards: int
    side_tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    """The feature families of the item and user tables (``features.side_tables``)."""
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    plans: PlanTables | None = None
    """The plan tables of the weeks scored when the model reads the forward plan features
    (the same for every shard: a shard joins them through its users' stores)."""
    first_buyers: pl.DataFrame | None = None
    """The item first-buyer family over every user (``new_items_ranking.first_buyer_items``)
    when the run publishes a new-items list (``publish.new_items > 0``), else None."""
    transactions: pl.DataFrame | None = None
    """All catalogue-applied transactions in memory, or None when ``shards_dir`` is set."""
    partitions: dict[int, pl.DataFrame] | None = None
    """The same rows split by shard once (``shard_context.partition_transactions``), when in
    memory."""
    shards_dir: sharding.Location | None = None
    """Per-shard parquet folders (``sharding.write_shards``), read by each task: an absolute
    path or a URL, the same for the driver and every worker."""
    version: str | None = None
    """The Redis version being written (None: score only, nothing is published)."""
    output_dir: Path | None = None
    """When set, each shard also writes its recommendations to ``shard=NNNNN.parquet`` here."""
    expected_users: int | None = None
    """Users of the whole run (sizes the version's bucket hashes); None: shards x
    ``scale.shard_users``, an upper bound."""
    driver_client: Any = field(default=None, repr=False)
    """The driver's Redis client, reused by shards run in this process (local executor);
    None: each shard connects from ``settings.redis`` (a Dask worker has no other way)."""
    return_recommendations: bool = False
    """The shard hands its recommendations back even when publishing (a Dask worker: the
    driver writes ``output_dir``, so workers need no write access to the run directory)."""

    def shard_transactions(self, shard: int) -> pl.DataFrame:
        """The rows of the users of ``shard``."""
        if self.shards_dir is not None:
            return sharding.scan_shard(self.shards_dir, shard).collect()
        if self.partitions is not None:
            empty = self.partitions.get(-1)
            return self.partitions.get(shard, empty if empty is not None else pl.DataFrame())
        if self.transactions is None:
            msg = "ShardContext needs transactions or shards_dir"
            raise ValueError(msg)
        return self.transactions.filter(sharding.shard_of(self.n_shards) == shard)

    def shard_users(self, shard: int) -> pl.DataFrame:
        """The distinct users of ``shard``'s rows (``user_id``, Int64, sorted): read from
        the shard's own rows, so the driver never lists every customer at once."""
        if self.shards_dir is not None:
            rows = sharding.scan_shard(self.shards_dir, shard)
        else:
            rows = self.shard_transactions(shard).lazy()
        return rows.select(pl.col(C.USER).cast(pl.Int64)).unique().sort(C.USER).collect()

    def shard_has_rows(self, shard: int) -> bool:
        """Whether ``shard`` holds any rows (from the parquet metadata on disk)."""
        if self.shards_dir is not None:
            return bool(
                sharding.scan_shard(self.shards_dir, shard).select(pl.len()).collect().item()
            )
        return self.shard_transactions(shard).height > 0


@dataclass
class ShardResult:
    """What one shard did (small: it travels back to the driver)."""

    shard: int
    users: int
    rows: int
    """Recommendation rows (users x k, fewer for users with short lists)."""
    items: list[int] = field(default_factory=list)
    """Distinct items recommended in the shard (for the item attributes)."""
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0
    recommendations: pl.DataFrame | None = None
    """Only when they have nowhere else to go: not publishing and no ``output_dir`` (the
    driver would otherwise hold every customer's list), or a Dask worker's for the driver
    to write (``return_recommendations``)."""
    written: writer.Written | None = None
    """Fields the shard stored per family and bucket (publishing runs): the driver verifies
    the version against the sum over shards."""


ShardFn = Callable[[ShardContext, int, pl.DataFrame], ShardResult]


def shard_recommendations(
    ctx: ShardContext, shard: int, user_ids: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame | None, dict[str, float]]:
    """Top k of ``user_ids`` (all in ``shard``), as ``two_stage.recommend`` would give them,
    and their new-items lists (#26) when the run publishes them.

    A run of one shard computes the new-items lists on a thread beside the main list: its
    task is all the work left, and neither list reads the other. In a larger run each shard
    computes them after it, so that a shard holds one list's frames at a time.

    Returns
    -------
    tuple
        Recommendations (schema ``RECOMMENDATIONS`` + ``reason``), the new-items lists
        (``user_id, item_id, rank, reason``, of the users with a main list; None when
        ``ctx.first_buyers`` is None) and seconds per step.
    """
    from recsys_batch.model import two_stage  # noqa: PLC0415 - heavy (lightgbm, implicit)
    from recsys_batch.model.featured import stage1_knowing  # noqa: PLC0415

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    model = ctx.model
    cut = model.windows.target_end
    own = ctx.shard_transactions(shard)
    tx = pl.concat([own, ctx.reference_rows.select(own.columns).cast(own.schema)]).lazy()
    tx = split.before_test(tx, model.windows)
    seconds["read"] = time.perf_counter() - started

    started = time.perf_counter()
    data = two_stage.ModelData(
        tx,
        ctx.catalogue_items.lazy(),
        ctx.items.lazy() if ctx.items is not None else None,
        ctx.users.lazy() if ctx.users is not None else None,
        ctx.plans,
    )
    # The shard's users' slice of stage 1 (a no-op for a Dask task's slice): the chunks of
    # candidate generation then never scan every user's rows (own purchases, 37M at 100x).
    stage1 = stage1_for_users(ctx, user_ids[C.USER])
    # Its users outside stage 1's sample folded in once, for both lists (#28).
    stage1 = stage1_knowing(stage1, data, user_ids.lazy(), cut, ctx.settings)
    tables = shard_tables(ctx, data, cut)
    new_items_job: Callable[[], tuple[pl.DataFrame, float]] | None = None
    running = None
    if ctx.first_buyers is not None:
        sliced = replace(model, stage1_for_scoring=stage1)
        new_items_job = partial(
            timed, partial(shard_new_items, ctx, sliced, data, user_ids, ctx.first_buyers, tables)
        )
        if ctx.n_shards == 1:
            running = beside_gate.start(new_items_job)
            new_items_job = running.result
    try:
        recs = main_list(ctx, stage1, data, user_ids, tables, seconds, started)
    except BaseException:
        beside_gate.settle(running)  # nothing of the shard computes once its error is out
        raise
    if new_items_job is None:
        return recs, None, seconds
    new_items, seconds["new_items"] = new_items_job()
    return recs, new_items.join(recs.select(C.USER), on=C.USER, how="semi"), seconds


def timed(fit: Callable[[], T]) -> tuple[T, float]:
    """``fit()`` and the seconds it took."""
    started = time.perf_counter()
    return fit(), time.perf_counter() - started


def main_list(
    ctx: ShardContext,
    stage1: Any,
    data: ModelData,
    user_ids: pl.DataFrame,
    tables: dict[str, pl.DataFrame],
    seconds: dict[str, float],
    started: float,
) -> pl.DataFrame:
    """The shard's top ``publish.top_n`` per user with reasons, checked; ``features`` and
    ``score`` seconds into ``seconds`` (the features' counted from ``started``)."""
    from recsys_batch.model import two_stage  # noqa: PLC0415 - heavy (lightgbm, implicit)
    from recsys_batch.model.ranking import ranking_scores, top_k  # noqa: PLC0415

    cut = ctx.model.windows.target_end
    feats = two_stage.featured_candidates(
        stage1, data, user_ids.lazy(), cut, ctx.settings, fixed_tables=tables
    )
    frame = feats.frame.join(ctx.catalogue_items.lazy(), on=C.ITEM, how="semi").collect()
    seconds["features"] = time.perf_counter() - started

    started = time.perf_counter()
    scored = ranking_scores(ctx.model.ranker, frame, ctx.settings.ranker)
    recs = top_k(scored.lazy(), ctx.settings.publish.top_n).collect()
    if ctx.settings.publish.reasons:
        recs = recs.lazy().join(item_reasons(frame), on=[C.USER, C.ITEM], how="left").collect()
    seconds["score"] = time.perf_counter() - started
    check_recommendations(recs, ctx)
    return recs


def shard_tables(ctx: ShardContext, data: ModelData, cut: int) -> dict[str, pl.DataFrame]:
    """The shard's feature families as of ``cut``, computed once for both of its lists: the
    item family over every user (``ctx.item_table``), the side tables, and the user and
    user x item families from the shard's rows (``features.family_tables``)."""
    from recsys_batch.model.features import family_tables  # noqa: PLC0415 - heavy

    return family_tables(
        data.transactions,
        data.items,
        data.users,
        cut,
        ctx.settings.features,
        ctx.settings.prefilter.placeholder_item,
        fixed={"item": ctx.item_table, **ctx.side_tables},
    )


def shard_new_items(
    ctx: ShardContext,
    model: Any,
    data: ModelData,
    users: pl.DataFrame,
    first_buyers: pl.DataFrame,
    tables: dict[str, pl.DataFrame],
) -> pl.DataFrame:
    """The new-items lists of ``users`` (the shard's ``user_id``), from the shard's rows and
    the item families computed over every user, as the backtest ranks them
    (``new_items_ranking.new_item_recommendations``). ``tables``: the shard's families that
    the main list read (:func:`shard_tables`: same rows, same cut), not computed again."""
    from recsys_batch.model.new_items_ranking import (  # noqa: PLC0415 - heavy (lightgbm)
        FIRST_BUYERS,
        new_item_recommendations,
    )

    tables = {**tables, FIRST_BUYERS: first_buyers}
    return new_item_recommendations(model, data, users.lazy(), ctx.settings, fixed_tables=tables)


REASON = "reason"
"""Column of the published recommendations: the item's reason as text (``r9.12``, ``b``,
``a``, ``t``, ``p``), packed by the writer (``keys.reason_value``)."""


def item_reasons(frame: pl.DataFrame) -> pl.LazyFrame:
    """``user_id, item_id, reason``: why each candidate was proposed (``?explain=true``).

    The user's own purchases say how often (distinct days) and how long ago they were
    bought (``r9.12``); otherwise the generator that proposed the item, in the order
    co-purchase (``b``), ALS (``a``), trend (``t``), popular (``p``). The co-purchase
    generator does not keep the seed item, so ``b`` carries no item id.
    """
    names = frame.columns

    def proposed(generator: str) -> pl.Expr:
        column = C.rank_col(generator)
        return pl.col(column).is_not_null() if column in names else pl.lit(value=False)

    repeat = pl.format(
        "r{}.{}",
        pl.col("ui_days").cast(pl.Int64),
        pl.col("ui_days_since").fill_null(0).cast(pl.Int64),
    )
    bought = (pl.col("ui_days").fill_null(0) > 0) if "ui_days" in names else pl.lit(value=False)
    reason = (
        pl.when(bought)
        .then(repeat if "ui_days" in names else pl.lit("a"))
        .when(proposed("copurchase"))
        .then(pl.lit("b"))
        .when(proposed("als"))
        .then(pl.lit("a"))
        .when(proposed("trend"))
        .then(pl.lit("t"))
        .when(proposed("popular"))
        .then(pl.lit("p"))
        .otherwise(pl.lit("a"))
    )
    return frame.lazy().select(C.USER, C.ITEM, reason.alias(REASON)).unique([C.USER, C.ITEM])


def check_recommendations(recs: pl.DataFrame, ctx: ShardContext) -> None:
    """Catalogue items only, no placeholder, no duplicate, at most k per user.

    Raises
    ------
    RecsysError
        The contract of the published lists is broken (nothing is published).
    """
    placeholder = ctx.settings.prefilter.placeholder_item
    bad = recs.filter(
        (pl.col(C.ITEM) == placeholder)
        | ~pl.col(C.ITEM).is_in(ctx.catalogue_items[C.ITEM].implode())
    ).height
    dups = recs.select(pl.struct(C.USER, C.ITEM).is_duplicated().sum()).item()
    top_n = ctx.settings.publish.top_n
    too_many = recs.group_by(C.USER).len().filter(pl.col("len") > top_n).height
    if bad or dups or too_many:
        msg = (
            f"recommendations break their contract: {bad} non-catalogue/placeholder rows, "
            f"{dups} duplicate rows, {too_many} users with more than "
            f"{top_n} items"
        )
        raise RecsysError(msg)


def run_shard(ctx: ShardContext, shard: int, user_ids: pl.DataFrame) -> ShardResult:
    """Score one shard and, when ``ctx.version`` is set, write it into that version.

    The shard's users are counted back (``HMGET``) before the task reports success, so a
    lost write fails the shard (and is retried) instead of the whole night at the end.
    """
    from recsys_batch.run.records import peak_memory_mb  # noqa: PLC0415

    recs, new_items, seconds = shard_recommendations(ctx, shard, user_ids)
    served = recs[C.ITEM] if new_items is None else pl.concat([recs[C.ITEM], new_items[C.ITEM]])
    result = ShardResult(
        shard=shard,
        users=recs[C.USER].n_unique(),
        rows=recs.height,
        items=served.unique().sort().to_list(),
        seconds=seconds,
    )
    if ctx.output_dir is not None:
        write_recommendations(recs, ctx.output_dir, shard)
    if (ctx.version is None and ctx.output_dir is None) or ctx.return_recommendations:
        result.recommendations = recs
    if ctx.version is not None and recs.height:
        started = time.perf_counter()
        own_client = ctx.driver_client is None
        client = store.connect(ctx.settings.redis) if own_client else ctx.driver_client
        try:
            written = writer.write_users(
                client, ctx.version, recs, publish_config(ctx), new_items=new_items
            )
        finally:
            if own_client:
                client.close()
        if written.users != result.users:
            msg = f"shard {shard}: {written.users} of {result.users} user keys verified"
            raise PublishError(msg)
        result.written = written
        seconds["publish"] = time.perf_counter() - started
    result.peak_memory_mb = peak_memory_mb()
    steps = ", ".join(f"{step} {sec:.2f}s" for step, sec in seconds.items())
    log.info("shard %d: %d users (%s)", shard, result.users, steps)
    return result


def with_stage1(ctx: ShardContext, stage1_model: Any) -> ShardContext:
    """``ctx`` whose model scores with ``stage1_model`` (a slice of its stage 1)."""
    return replace(ctx, model=replace(ctx.model, stage1_for_scoring=stage1_model))


def stage1_for_users(ctx: ShardContext, user_ids: pl.Series | None) -> Any:
    """The model's stage 1 sliced to ``user_ids`` (None: to nobody, the item-level parts)."""
    from recsys_batch.model.stage1_slice import for_users  # noqa: PLC0415 - heavy

    ids = user_ids.to_numpy() if user_ids is not None else np.empty(0, dtype=np.int64)
    return for_users(ctx.model.stage1_for_scoring, ids)


def run_sliced(
    fn: ShardFn, ctx: ShardContext, stage1_model: Any, shard: int, user_ids: pl.DataFrame
) -> ShardResult:
    """``fn`` on ``ctx`` with the shard's own slice of stage 1 (a Dask task: the context
    broadcast to every worker holds only stage 1's item-level parts)."""
    return fn(with_stage1(ctx, stage1_model), shard, user_ids)


def publish_config(ctx: ShardContext) -> RedisConfig:
    """``settings.redis`` with the version's bucket count sized for all its users.

    Every shard proposes the same count (the run's users, counted before scoring; else
    shards x ``scale.shard_users``, an upper bound), so the version's buckets hold about
    ``keys.USERS_PER_BUCKET`` users each.
    """
    cfg = ctx.settings.redis
    if cfg.user_buckets:
        return cfg
    expected = ctx.expected_users or ctx.n_shards * ctx.settings.scale.shard_users
    return cfg.model_copy(update={"user_buckets": keys.bucket_count(expected)})


def write_recommendations(recs: pl.DataFrame, folder: Path, shard: int) -> Path:
    """``folder/shard=NNNNN.parquet``: one shard's recommendations in the run directory."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"{sharding.SHARD}={shard:05d}.parquet"
    recs.write_parquet(path)
    return path
