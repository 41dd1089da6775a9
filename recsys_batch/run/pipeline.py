"""``recsys nightly-batch``: data -> two-stage model -> top 5 per user -> Redis (issue #5).

Stages, each logged on one line with its output rows and seconds and recorded in
``runs/<run_id>/manifest.json``::

    load       read + validate the source; ``--run-date`` drops what came later
    gate       backtest on the last ``split.test_weeks`` weeks (as ``recsys evaluate``):
               two_stage / all-users Precision@5 must reach ``gate.min_precision_at_5`` and
               lose at most ``gate.max_relative_drop`` against the live version's value
    prefilter  catalogue from all (cut) data; non-catalogue purchases -> placeholder item;
               out of core (``scale.in_memory_rows``), also the per-shard parquet folders
    train      two-stage model on the production windows (stage 2 = the last weeks), on at
               most ``scale.train_users`` users; stage 1 refit on everyone when sampled
    recommend  the shards' shared inputs (item features, reference day), then the top k for
               every user of the data, features as of the newest week, in user shards of
               ``scale.shard_users`` (``scale.executor``: this process or Dask); when
               publishing, the shards are scored inside ``publish`` instead (issue #8)
    popular    fallback list for unknown users
    save       the models under runs/<run_id>/models, recommendations.parquet beside them
    publish    new Redis version, verified, then the pointer flip (skipped by --dry-run);
               sharded, each shard writes its users into the same version and the pointer
               flips once, after every shard succeeded

A stage producing zero rows raises :class:`~recsys_batch.errors.EmptyStageError` before
Redis is touched, and every failure before ``publish`` leaves the live version serving.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data import validation
from recsys_batch.data.sources import Dataset, load_dataset
from recsys_batch.errors import (
    DataError,
    EmptyStageError,
    PublishError,
    QualityGateError,
    RecsysError,
)
from recsys_batch.model import split
from recsys_batch.model.prefilter import apply_catalogue, prefilter
from recsys_batch.publish import store, versions
from recsys_batch.run import executors, records, sharding
from recsys_batch.run.lock import run_lock

log = logging.getLogger(__name__)

GATE_MODEL = "two_stage"
RECOMMENDATIONS_FILE = "recommendations.parquet"
SHARDS_DIR = "shards"
"""Out-of-core runs: the catalogue-applied transactions, one parquet folder per shard;
removed when the run ends."""
GATE_USER_SET = "all"
GATE_METRIC = "precision@5"


class Trainer(Protocol):
    """The stage-2 functions the batch needs (``recsys_batch.model.two_stage`` in production)."""

    def train_two_stage(  # noqa: D102
        self,
        tx: pl.LazyFrame,
        items: pl.LazyFrame | None,
        users: pl.LazyFrame | None,
        catalogue: pl.LazyFrame,
        windows: split.Windows,
        settings: Settings,
    ) -> Any: ...

    def recommend(  # noqa: D102
        self,
        model: Any,
        tx: pl.LazyFrame,
        items: pl.LazyFrame | None,
        users: pl.LazyFrame | None,
        catalogue: pl.LazyFrame,
        user_ids: pl.LazyFrame,
        settings: Settings,
    ) -> pl.DataFrame: ...

    def popular_fallback(self, tx: pl.LazyFrame, catalogue: pl.LazyFrame, k: int) -> list[int]:  # noqa: D102
        ...

    def save_model(self, model: Any, directory: Path) -> None:  # noqa: D102
        ...


@dataclass
class GateOutcome:
    """What the quality gate's backtest measured, and the model it measured."""

    metrics: dict[str, Any]
    """``{"precision@5": float, ...}`` for two_stage / all users."""
    model: Any = None
    """The backtest's two-stage model; its ranker is published when
    ``gate.publish_gated_ranker`` is on and the trainer offers ``with_gated_ranker``."""


Evaluator = Callable[[Dataset, Settings], "dict[str, Any] | GateOutcome"]
"""Backtest returning the two_stage / all-users metrics (a dict, or a :class:`GateOutcome`
that also carries the model)."""


@dataclass
class RunResult:
    """What one nightly run did."""

    run_id: str
    run_dir: Path
    status: str
    """``published`` or ``dry-run``."""
    version: str | None
    users: int
    metrics: dict[str, Any] = field(default_factory=dict)
    stages: list[records.StageRecord] = field(default_factory=list)
    peak_memory_mb: float = 0.0


def default_trainer() -> Trainer:
    """The production trainer: the ``two_stage`` module (imported on use)."""
    from recsys_batch.model import two_stage  # noqa: PLC0415

    return two_stage


def backtest_metrics(dataset: Dataset, settings: Settings) -> GateOutcome:
    """The gate's metrics (``backtest.run_backtest``'s two_stage / all-users row) and model."""
    from recsys_batch.evaluation import backtest  # noqa: PLC0415

    result = backtest.run_backtest(dataset, settings)
    for row in result.rows:
        if row.get("model") == GATE_MODEL and row.get("user_set") == GATE_USER_SET:
            metrics = {k: v for k, v in row.items() if k not in {"model", "user_set"}}
            return GateOutcome(metrics, result.model)
    msg = "the backtest returned no two_stage/all row; cannot apply the quality gate"
    raise QualityGateError(msg)


def cut_day(run_date: date, origin: date) -> int:
    """Day number (1-based, day 1 = ``origin``) of ``run_date``: later days are unseen."""
    return (run_date - origin).days + 1


def check_gate(
    metrics: dict[str, Any], live_metrics: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """Refuse a model below the floor or too far below the live version.

    Returns
    -------
    dict
        The decision, recorded in the manifest: value, floor, live value, threshold.

    Raises
    ------
    QualityGateError
        Exit code 3; nothing is published.
    """
    cfg = settings.gate
    value = metrics.get(GATE_METRIC)
    if not isinstance(value, int | float):
        msg = f"the backtest reported no {GATE_METRIC}; cannot apply the quality gate"
        raise QualityGateError(msg)
    live = live_metrics.get(GATE_METRIC)
    decision: dict[str, Any] = {
        "metric": GATE_METRIC,
        "value": value,
        "floor": cfg.min_precision_at_5,
        "live": live,
        "max_relative_drop": cfg.max_relative_drop,
    }
    if value < cfg.min_precision_at_5:
        msg = (
            f"quality gate refused to publish: {GATE_METRIC} {value:.4f} is below the floor "
            f"{cfg.min_precision_at_5:.4f} (gate.min_precision_at_5); the live version keeps "
            "serving"
        )
        raise QualityGateError(msg)
    if isinstance(live, int | float) and live > 0:
        threshold = live * (1 - cfg.max_relative_drop)
        decision["threshold"] = threshold
        if value < threshold:
            msg = (
                f"quality gate refused to publish: {GATE_METRIC} {value:.4f} is more than "
                f"{cfg.max_relative_drop:.0%} below the live version's {live:.4f}; the live "
                "version keeps serving"
            )
            raise QualityGateError(msg)
    return decision


@contextlib.contextmanager
def _stage(record: records.RunRecord, name: str) -> Iterator[list[int]]:
    """Time a stage; the body appends its row count to the yielded list."""
    rows: list[int] = []
    started = time.perf_counter()
    yield rows
    seconds = time.perf_counter() - started
    count = rows[-1] if rows else 0
    peak = records.peak_memory_mb()
    record.stages.append(records.StageRecord(name, count, seconds, peak))
    log.info(
        "stage %-9s rows=%-9d %6.2fs  peak %5.0f MiB",
        name,
        count,
        seconds,
        peak,
        extra={
            "fields": {
                "stage": name,
                "rows": count,
                "seconds": round(seconds, 3),
                "peak_mb": round(peak, 1),
            }
        },
    )


def _nonempty(frame: pl.DataFrame, stage: str, what: str) -> pl.DataFrame:
    if frame.height == 0:
        msg = f"stage {stage!r} produced zero {what}; refusing to publish an empty version"
        raise EmptyStageError(msg, fix="check the input data and the prefilter settings")
    return frame


@dataclass
class _Loaded:
    """The validated input: in memory, or lazy scans for an out-of-core run."""

    dataset: Dataset
    rows: int
    users: int
    first_day: int
    last_day: int
    in_memory: bool


def _load(settings: Settings, run_date: date | None) -> _Loaded:
    dataset = load_dataset(settings.data)
    dataset = validation.validated(dataset, settings)
    tx = dataset.transactions
    if run_date is not None:
        tx = tx.filter(pl.col(C.DAY) <= cut_day(run_date, settings.data.origin_date))
    rows, users, first_day, last_day = (
        tx.select(
            pl.len().alias("rows"),
            pl.col(C.USER).n_unique().alias("users"),
            pl.col(C.DAY).min().alias("first_day"),
            pl.col(C.DAY).max().alias("last_day"),
        )
        .collect(engine="streaming")
        .row(0)
    )
    in_memory = rows <= settings.scale.in_memory_rows
    if in_memory:
        tx = tx.collect().lazy()
    cut = Dataset(
        transactions=tx,
        items=dataset.items.collect().lazy() if dataset.items is not None else None,
        users=dataset.users.collect().lazy() if dataset.users is not None else None,
        name=dataset.name,
    )
    return _Loaded(cut, rows, users, first_day or 0, last_day or 0, in_memory)


def _gate_dataset(loaded: _Loaded, settings: Settings) -> Dataset:
    """The gate's backtest runs on at most ``scale.train_users`` users (all, at 1x)."""
    dataset = loaded.dataset
    sample = sharding.sample_users(dataset.transactions, loaded.users, settings.scale.train_users)
    if sample is dataset.transactions:
        return dataset
    log.info(
        "gate: backtest on a stable sample of ~%d of %d users (scale.train_users)",
        settings.scale.train_users,
        loaded.users,
    )
    return Dataset(sample, dataset.items, dataset.users, dataset.name)


def _check_recommendations(recs: pl.DataFrame, catalogue: pl.DataFrame, settings: Settings) -> None:
    """Invariants of the published lists: catalogue items only, no placeholder, no dups."""
    bad = recs.filter(
        (pl.col(C.ITEM) == settings.prefilter.placeholder_item)
        | ~pl.col(C.ITEM).is_in(catalogue[C.ITEM].implode())
    )
    dups = recs.select(pl.struct(C.USER, C.ITEM).is_duplicated().sum()).item()
    too_many = recs.group_by(C.USER).len().filter(pl.col("len") > settings.ranker.top_k).height
    if bad.height or dups or too_many:
        msg = (
            f"recommendations break their contract: {bad.height} non-catalogue/placeholder "
            f"rows, {dups} duplicate rows, {too_many} users with more than "
            f"{settings.ranker.top_k} items; nothing was published"
        )
        raise RecsysError(msg)


def _live_metrics(client: store.Client | None, settings: Settings) -> dict[str, Any]:
    if client is None:
        return {}
    live = versions.live_version(client, settings.redis)
    if not live:
        return {}
    return versions.version_info(client, live, settings.redis).metrics


def run_nightly(
    settings: Settings,
    run_date: date | None = None,
    dry_run: bool = False,
    gate: bool = True,
    *,
    trainer: Trainer | None = None,
    evaluator: Evaluator | None = None,
    client: store.Client | None = None,
) -> RunResult:
    """Train, score every user and publish atomically; see the module docstring.

    Parameters
    ----------
    settings
        Built once by the CLI.
    run_date
        Treat transactions after this date (``data.origin_date`` = day 1) as unseen.
    dry_run
        Do everything but the publish (Redis is only read, for the gate, when reachable).
    gate
        Apply the quality gate (also needs ``settings.gate.enabled``).
    trainer, evaluator, client
        Injected in tests; default to ``two_stage``, ``backtest`` and ``store.connect``.

    Raises
    ------
    LockError
        Another run holds the lock (exit 5).
    DataError, ConfigError
        Bad input or configuration (exit 2); ``EmptyStageError`` for an empty stage.
    QualityGateError
        The model is not good enough (exit 3); nothing was published.
    PublishError
        Redis unavailable or the write failed (exit 4); the live version is untouched.
    """
    with run_lock(settings.run.lock_file):
        return _run_locked(settings, run_date, dry_run, gate, trainer, evaluator, client)


def _run_locked(
    settings: Settings,
    run_date: date | None,
    dry_run: bool,
    gate: bool,
    trainer: Trainer | None,
    evaluator: Evaluator | None,
    client: store.Client | None,
) -> RunResult:
    settings_json = settings.model_dump(mode="json")
    settings_json["redis"]["url"] = store.mask_url(settings.redis.url)
    parameters = {
        "settings": settings_json,
        "run_date": run_date.isoformat() if run_date else None,
        "dry_run": dry_run,
        "gate": gate and settings.gate.enabled,
        "redis": store.describe(settings.redis),
    }
    record = records.start_run(settings.run.runs_dir, parameters)
    log.info("run %s started (%s)", record.run_id, record.run_dir)
    try:
        result = _run_stages(record, settings, run_date, dry_run, gate, trainer, evaluator, client)
    except BaseException as exc:
        status = "gate-refused" if isinstance(exc, QualityGateError) else "failed"
        with contextlib.suppress(RecsysError):
            records.finish_run(record, status, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        shutil.rmtree(record.run_dir / SHARDS_DIR, ignore_errors=True)
    return result


def _run_stages(
    record: records.RunRecord,
    settings: Settings,
    run_date: date | None,
    dry_run: bool,
    gate: bool,
    trainer: Trainer | None,
    evaluator: Evaluator | None,
    client: store.Client | None,
) -> RunResult:
    # Fail fast on an unreachable Redis (exit 4) before an expensive training run.
    if client is None and not dry_run:
        client = store.connect(settings.redis)
    elif client is None:
        with contextlib.suppress(PublishError):
            client = store.connect(settings.redis)

    with _stage(record, "load") as rows:
        loaded = _load(settings, run_date)
        if loaded.rows == 0:
            _nonempty(pl.DataFrame(), "load", "transactions")
        rows.append(loaded.rows)
    dataset = loaded.dataset
    first_day, last_day = loaded.first_day, loaded.last_day
    first_week, last_week = split.week_range(dataset.transactions)
    record.data = {
        "source": dataset.name,
        "rows": loaded.rows,
        "users": loaded.users,
        "first_day": first_day,
        "last_day": last_day,
        "first_week": first_week,
        "last_week": last_week,
        "in_memory": loaded.in_memory,
    }
    if not loaded.in_memory:
        log.info(
            "out of core: %d transactions > scale.in_memory_rows %d; shards on disk",
            loaded.rows,
            settings.scale.in_memory_rows,
        )
    windows = split.production_windows(first_week, last_week, settings.split)

    metrics: dict[str, Any] = {}
    gated_model: Any = None
    if gate and settings.gate.enabled:
        with _stage(record, "gate") as rows:
            outcome = (evaluator or backtest_metrics)(_gate_dataset(loaded, settings), settings)
            if not isinstance(outcome, GateOutcome):
                outcome = GateOutcome(outcome)
            metrics, gated_model = outcome.metrics, outcome.model
            live_metrics = _live_metrics(client, settings)
            record.metrics = {**metrics, "gate": check_gate(metrics, live_metrics, settings)}
            rows.append(1)
        log.info("quality gate passed: %s %.4f", GATE_METRIC, metrics.get(GATE_METRIC, 0.0))
    else:
        record.metrics = {"gate": "skipped"}
        log.warning("quality gate skipped (--no-gate or gate.enabled = false)")

    shards_dir = None if loaded.in_memory else record.run_dir / SHARDS_DIR
    with _stage(record, "prefilter") as rows:
        catalogue = prefilter(dataset.transactions, dataset.items, settings.prefilter)
        catalogue_df = _nonempty(
            catalogue.catalogue.collect(engine="streaming"), "prefilter", "catalogue items"
        )
        tx_cat = apply_catalogue(dataset.transactions, catalogue_df.lazy(), settings.prefilter)
        tx_cat = _materialise(tx_cat, loaded, shards_dir, settings)
        rows.append(catalogue_df.height)

    model_api = trainer or default_trainer()
    reuse = getattr(model_api, "with_gated_ranker", None)
    with _stage(record, "train") as rows:
        if gated_model is not None and reuse is not None and settings.gate.publish_gated_ranker:
            # The ranker that passed the gate scores; stage 1 is refit on everyone.
            model = reuse(gated_model, tx_cat, catalogue_df.lazy(), windows, settings)
            record.metrics["ranker_source"] = "gate"
        else:
            sample = sharding.sample_users(tx_cat, loaded.users, settings.scale.train_users)
            model = model_api.train_two_stage(
                sample, dataset.items, dataset.users, catalogue_df.lazy(), windows, settings
            )
            if sample is not tx_cat:
                _refit_stage1_on_everyone(model, tx_cat, catalogue_df, windows, settings)
            record.metrics["ranker_source"] = "trained"
        rows.append(1)

    user_ids = dataset.transactions.select(C.USER).unique().sort(C.USER)
    if loaded.in_memory:
        user_ids = user_ids.collect().lazy()
    recs: pl.DataFrame | None = None
    with _stage(record, "recommend") as rows:
        # The shards' shared inputs (item features over every user, the reference day).
        shard_ctx = _shard_context(model, tx_cat, dataset, catalogue_df, settings, shards_dir)
        executor = executors.make_executor(settings) if shard_ctx is not None else None
        if shard_ctx is None:
            recs = model_api.recommend(
                model,
                tx_cat,
                dataset.items,
                dataset.users,
                catalogue_df.lazy(),
                user_ids,
                settings,
            )
        elif dry_run:
            assert executor is not None
            recs = executors.score_shards(shard_ctx, user_ids, executor).recommendations()
        if recs is not None:
            _nonempty(recs, "recommend", "recommendations")
            _check_recommendations(recs, catalogue_df, settings)
            rows.append(recs.height)
        else:
            rows.append(0)  # scored shard by shard inside "publish"
    users = recs[C.USER].n_unique() if recs is not None else 0

    with _stage(record, "popular") as rows:
        popular = model_api.popular_fallback(tx_cat, catalogue_df.lazy(), settings.ranker.top_k)
        if not popular:
            _nonempty(pl.DataFrame(), "popular", "fallback items")
        rows.append(len(popular))

    with _stage(record, "save") as rows:
        try:
            model_api.save_model(model, record.models_dir)
            # What was (or, with --dry-run, would have been) published, for inspection. When
            # the shards publish, each writes its file into a folder of the same name.
            if recs is not None:
                recs.write_parquet(record.run_dir / RECOMMENDATIONS_FILE)
        except OSError as exc:
            msg = f"cannot save the models under {record.models_dir}: {exc}"
            raise DataError(msg, fix="free disk space or make the runs directory writable") from exc
        records.write_manifest(record)  # also proves the runs disk is writable before publishing
        rows.append(1)

    version: str | None = None
    if not dry_run:
        assert client is not None
        with _stage(record, "publish") as rows:
            meta = {
                "run_id": record.run_id,
                "data_source": dataset.name,
                "first_day": first_day,
                "last_day": last_day,
                "run_date": run_date.isoformat() if run_date else None,
                "metrics": {k: v for k, v in record.metrics.items() if k != "gate"},
                "durations": {s.name: round(s.seconds, 3) for s in record.stages},
                "code_version": _code_version(),
            }
            if recs is None:
                assert shard_ctx is not None
                assert executor is not None
                shard_ctx.output_dir = record.run_dir / RECOMMENDATIONS_FILE
                if isinstance(executor, executors.LocalExecutor):
                    shard_ctx.driver_client = client  # the same server as begin/flip
                sharded = executors.publish_shards(
                    shard_ctx, user_ids, executor, client, popular, meta
                )
                version, users = sharded.version, sharded.users
            else:
                items_attrs = _item_attributes(dataset.items, recs, popular)
                version = versions.publish_version(
                    client, recs, popular, items_attrs, meta, settings.redis
                )
            rows.append(users)
        record.version = version
    record.peak_memory_mb = records.peak_memory_mb()
    status = "dry-run" if dry_run else "published"
    records.finish_run(record, status)
    log.info(
        "run %s %s: %d users, version %s, %.1fs, peak %.0f MiB",
        record.run_id,
        status,
        users,
        version or "-",
        sum(s.seconds for s in record.stages),
        record.peak_memory_mb,
    )
    return RunResult(
        run_id=record.run_id,
        run_dir=record.run_dir,
        status=status,
        version=version,
        users=users,
        metrics=record.metrics,
        stages=record.stages,
        peak_memory_mb=record.peak_memory_mb,
    )


def _materialise(
    tx_cat: pl.LazyFrame, loaded: _Loaded, shards_dir: Path | None, settings: Settings
) -> pl.LazyFrame:
    """The catalogue-applied transactions: collected, or written one folder per shard."""
    if shards_dir is None:
        return tx_cat.collect().lazy()
    n_shards = sharding.shard_count(loaded.users, settings.scale.shard_users)
    sharding.write_shards(tx_cat, n_shards, shards_dir)
    return pl.scan_parquet(shards_dir / "*" / "*.parquet", hive_partitioning=False)


def _refit_stage1_on_everyone(
    model: Any,
    tx_cat: pl.LazyFrame,
    catalogue: pl.DataFrame,
    windows: split.Windows,
    settings: Settings,
) -> None:
    """Training saw a user sample; stage 1 must know every user to propose their candidates."""
    from recsys_batch.model import candidates  # noqa: PLC0415 - heavy (implicit)

    if not hasattr(model, "stage1_for_scoring"):
        return
    model.stage1_for_scoring = candidates.fit_stage1(
        split.before_test(tx_cat, windows),
        catalogue.lazy(),
        settings.candidates,
        settings.prefilter.placeholder_item,
    )


def _shard_context(
    model: Any,
    tx_cat: pl.LazyFrame,
    dataset: Dataset,
    catalogue: pl.DataFrame,
    settings: Settings,
    shards_dir: Path | None = None,
) -> executors.ShardContext | None:
    """The shards' shared inputs, or None when ``model`` is not a two-stage model.

    Only ``two_stage.TrainedTwoStage`` can be scored shard by shard; an injected trainer
    (tests) keeps the one-call ``recommend`` path.
    """
    from recsys_batch.model import two_stage  # noqa: PLC0415 - heavy (lightgbm, implicit)

    if not isinstance(model, two_stage.TrainedTwoStage):
        return None
    users = tx_cat.select(pl.col(C.USER).n_unique()).collect().item()
    return executors.build_context(
        model,
        tx_cat,
        dataset.items,
        dataset.users,
        catalogue.lazy(),
        settings,
        sharding.shard_count(users, settings.scale.shard_users),
        shards_dir=shards_dir,
    )


def _item_attributes(
    items: pl.LazyFrame | None, recs: pl.DataFrame, popular: list[int]
) -> pl.DataFrame | None:
    """Attributes of the items that can be served (recommended or popular)."""
    if items is None:
        return None
    served = pl.concat(
        [recs.select(C.ITEM), pl.DataFrame({C.ITEM: popular}, schema={C.ITEM: pl.Int64})]
    )
    available = [c for c in C.ITEM_ATTRIBUTES if c in items.collect_schema().names()]
    return (
        items.select(C.ITEM, *available)
        .join(served.unique().lazy(), on=C.ITEM, how="semi")
        .unique(C.ITEM)
        .collect()
    )


def _code_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("recsys-batch")
    except Exception:  # noqa: BLE001 - metadata is optional (source checkout)
        return "unknown"
