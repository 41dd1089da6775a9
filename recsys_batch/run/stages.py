"""The stages of ``recsys nightly-batch``, each a function of the typed :class:`RunState`.

A stage reads what earlier stages left in the state, sets its own fields and returns the
number of rows it produced (logged and recorded in the manifest by the runner,
:mod:`recsys_batch.run.pipeline`). Stages do not catch exceptions: a failure before
``score_and_publish`` has not touched Redis, and a failure inside it leaves the live version
serving.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data import validation
from recsys_batch.data.frames import distinct_count
from recsys_batch.data.sources import Dataset, load_dataset
from recsys_batch.errors import DataError, EmptyStageError
from recsys_batch.model import plan_features, split, two_stage
from recsys_batch.model.prefilter import apply_catalogue, item_stats_in_parts, prefilter
from recsys_batch.publish import store
from recsys_batch.run import (
    beside_gate,
    driver_tables,
    executors,
    quality_gate,
    records,
    run_shards,
    shard_context,
    sharding,
)

log = logging.getLogger(__name__)

RECOMMENDATIONS_FILE = "recommendations.parquet"
"""Folder of the run's recommendations, one parquet file per shard."""
GATE_SAMPLE_FILE = "gate_sample.parquet"
"""Out-of-core runs: the gate's sample of users' transactions, removed after the gate."""
ITEM_PARTS_DIR = "item_parts"
"""Out-of-core runs: the prefilter's raw lines by item part, removed once its stats are read."""


@dataclass
class Loaded:
    """The validated input: in memory, or lazy scans for an out-of-core run."""

    dataset: Dataset
    rows: int
    users: int
    first_day: int
    last_day: int
    in_memory: bool


@dataclass
class RunState:
    """What one night knows, filled in stage by stage."""

    settings: Settings
    record: records.RunRecord
    run_date: date | None = None
    dry_run: bool = False
    gate: bool = True
    client: store.Client | None = None
    loaded: Loaded | None = None
    windows: split.Windows | None = None
    gated: quality_gate.GateOutcome | None = None
    catalogue: pl.DataFrame | None = None
    tx_cat: pl.LazyFrame | None = None
    model: two_stage.TrainedTwoStage | None = None
    popular: list[int] = field(default_factory=list)
    version: str | None = None
    users: int = 0
    forward_plans: bool = False
    """Whether this run's model reads the forward-looking plan features (#26): decided at
    load from whether the calendar covers the weeks it serves (and those its gate scores)."""
    plan_tables: plan_features.PlanTables | None = None
    serving_parts: Future[two_stage.ServingParts] | None = None
    """The gate's path, small inputs: the served model's other parts, fitted beside the gate."""

    @property
    def data(self) -> Loaded:
        """The loaded input (set by :func:`load`)."""
        if self.loaded is None:
            msg = "stage order: load must run first"
            raise RuntimeError(msg)
        return self.loaded


def nonempty(rows: int, stage: str, what: str) -> int:
    """``rows``, or :class:`EmptyStageError` (exit 2) before Redis is touched."""
    if rows == 0:
        msg = f"stage {stage!r} produced zero {what}; refusing to publish an empty version"
        raise EmptyStageError(msg, fix="check the input data and the prefilter settings")
    return rows


def cut_day(run_date: date, origin: date) -> int:
    """Day number (1-based, day 1 = ``origin``) of ``run_date``: later days are unseen."""
    return (run_date - origin).days + 1


def load(state: RunState) -> int:
    """Read and validate the source; ``--run-date`` drops what came later."""
    settings = state.settings
    dataset = validation.validated(load_dataset(settings.data), settings)
    tx = dataset.transactions
    if state.run_date is not None:
        tx = tx.filter(pl.col(C.DAY) <= cut_day(state.run_date, settings.data.origin_date))
    # One streaming pass for every count and range (the weeks too: one pass over the input
    # fewer than split.week_range's; the user count is the only part that grows, 8 B a user).
    rows, first_day, last_day, first_week, last_week, users = (
        tx.select(
            pl.len(),
            pl.col(C.DAY).min().alias("first_day"),
            pl.col(C.DAY).max().alias("last_day"),
            pl.col(C.WEEK).min().alias("first_week"),
            pl.col(C.WEEK).max().alias("last_week"),
        )
        .join(distinct_count(tx, C.USER, "users"), how="cross")
        .collect(engine="streaming", optimizations=pl.QueryOptFlags(comm_subplan_elim=False))
        .row(0)
    )
    nonempty(rows, "load", "transactions")
    in_memory = rows <= settings.scale.in_memory_rows
    cut = Dataset(
        transactions=tx.collect().lazy() if in_memory else tx,
        items=dataset.items.collect().lazy() if dataset.items is not None else None,
        users=dataset.users.collect().lazy() if dataset.users is not None else None,
        name=dataset.name,
        plans=dataset.plans,
    )
    state.loaded = Loaded(cut, rows, users, first_day or 0, last_day or 0, in_memory)
    state.windows = split.production_windows(first_week, last_week, settings.split)
    state.forward_plans, plan_reason = plan_decision(state, first_week, last_week)
    state.record.data = {
        "source": cut.name,
        "rows": rows,
        "users": users,
        "first_day": state.loaded.first_day,
        "last_day": state.loaded.last_day,
        "first_week": first_week,
        "last_week": last_week,
        "in_memory": in_memory,
        "forward_plan_features": state.forward_plans,
        "plan_features": plan_reason,
    }
    log.info("forward plan features %s: %s", "on" if state.forward_plans else "off", plan_reason)
    if not in_memory:
        log.info(
            "out of core: %d transactions > scale.in_memory_rows %d; shards on disk",
            rows,
            settings.scale.in_memory_rows,
        )
    return rows


def plan_decision(state: RunState, first_week: int, last_week: int) -> tuple[bool, str]:
    """Forward plan features on or off for the whole run, and why.

    On only when the calendar covers the weeks after every feature cut of the served model
    (its training cut and the weeks it serves, after the data) and of the gate's backtest
    (whose model is the served one): a plain night on data that ends with its calendar
    serves uncovered weeks and runs without them; ``--run-date`` inside the data has them.
    """
    settings, windows = state.settings, _windows(state)
    gate = split.backtest_windows(first_week, last_week, settings.split)
    horizons = [
        *plan_features.model_horizons(windows.history_end, windows.target_end, settings.split),
        *plan_features.model_horizons(gate.history_end, gate.target_end, settings.split),
    ]
    return plan_features.forward_decision(state.data.dataset.plans, horizons)


def run_gate(state: RunState) -> int:
    """The backtest on at most ``scale.train_users`` users; refuse a weak model (exit 3)."""
    settings = state.settings
    if not (state.gate and settings.gate.enabled):
        state.record.metrics = {"gate": "skipped"}
        log.warning("quality gate skipped (--no-gate or gate.enabled = false)")
        return 0
    loaded = state.data
    sample = sharding.sample_users(
        loaded.dataset.transactions, loaded.users, settings.scale.train_users
    )
    sample_file = None
    if sample is not loaded.dataset.transactions:
        log.info(
            "gate: backtest on a stable sample of ~%d of %d users (scale.train_users)",
            settings.scale.train_users,
            loaded.users,
        )
        if not loaded.in_memory:
            # The backtest reads its input several times: from one file of the sample's
            # rows, not by filtering every line each time (16 s of scans at 100x).
            sample_file = state.record.run_dir / GATE_SAMPLE_FILE
            sample.sink_parquet(sample_file)
            sample = pl.scan_parquet(sample_file)
    if settings.gate.publish_gated_ranker and loaded.rows <= settings.scale.beside_gate_rows:
        state.serving_parts = start_serving_parts(state)
    dataset = Dataset(
        sample,
        loaded.dataset.items,
        loaded.dataset.users,
        loaded.dataset.name,
        plans=loaded.dataset.plans,
    )
    try:
        outcome = quality_gate.backtest_outcome(dataset, settings, state.forward_plans)
        decision = gate_decision(state, outcome)
    except BaseException:
        beside_gate.settle(state.serving_parts)
        raise
    finally:
        if sample_file is not None:
            sample_file.unlink(missing_ok=True)
    state.gated = outcome
    state.record.metrics = {**outcome.metrics, "gate": decision}
    log.info("quality gate passed: %s %.4f", settings.gate.metric, decision["value"])
    return 1


def gate_decision(state: RunState, outcome: quality_gate.GateOutcome) -> dict[str, Any]:
    """The gate's decision on ``outcome`` (QualityGateError when refused)."""
    # Recorded before the decision, so a refused run's manifest and summary keep the value.
    state.record.metrics = {**outcome.metrics, "gate": {"metric": state.settings.gate.metric}}
    return quality_gate.check_gate(
        outcome.metrics, quality_gate.live_metrics(state.client, state.settings), state.settings
    )


def start_serving_parts(state: RunState) -> Future[two_stage.ServingParts]:
    """Start fitting stage 1 refit on everyone and the new-items ranker on the newest weeks
    over at most ``scale.train_users`` users: what the gate's path serves beside the gate's
    ranker. Up to ``scale.beside_gate_rows`` transactions the gate starts it, to run beside
    its backtest (:mod:`recsys_batch.run.beside_gate`); above, the train stage does, after
    the gate, so that the driver's peak is the larger of the two, not their sum."""
    settings, loaded = state.settings, state.data
    data = _model_data(state)  # here: it may fill the state's plan tables
    sample = sharding.sample_users(data.transactions, loaded.users, settings.scale.train_users)
    return beside_gate.start(
        functools.partial(
            two_stage.fit_serving_parts,
            data,
            _windows(state),
            settings,
            n_users=loaded.users,
            new_items_data=data.with_transactions(sample),
        )
    )


def run_prefilter(state: RunState) -> int:
    """The catalogue from all (cut) data; other purchases become the placeholder item.

    Out of core, or for Dask workers, the catalogue-applied transactions are also written
    once, one folder per shard, under :func:`~recsys_batch.run.run_shards.location` (every
    worker reads its own).
    """
    settings, loaded = state.settings, state.data
    tx = loaded.dataset.transactions
    stats = None
    if not loaded.in_memory:  # one pass writes the item parts; removed once read
        item_dir = state.record.run_dir / ITEM_PARTS_DIR
        stats = item_stats_in_parts(tx, item_parts(state), loaded.users, folder=item_dir)
    catalogue = prefilter(tx, loaded.dataset.items, settings.prefilter, stats).catalogue
    state.catalogue = catalogue.collect(engine="streaming")
    nonempty(state.catalogue.height, "prefilter", "catalogue items")
    tx_cat = apply_catalogue(tx, state.catalogue.lazy(), settings.prefilter)
    if loaded.in_memory:
        tx_cat = tx_cat.collect().lazy()
        state.tx_cat = tx_cat
    if shards_on_disk(state):
        shards_dir = run_shards.location(settings, state.record)
        n_shards = sharding.shard_count(loaded.users, settings.scale.shard_users)
        sharding.write_shards(tx_cat, n_shards, shards_dir)
        if not loaded.in_memory:
            state.tx_cat = sharding.scan_shards(shards_dir)
    return state.catalogue.height


def train(state: RunState) -> int:
    """The two-stage model for scoring and the popular fallback list.

    With ``gate.publish_gated_ranker`` the ranker the gate measured scores, with stage 1 refit
    on everyone and the new-items ranker trained on the newest weeks
    (:func:`start_serving_parts`); otherwise a ranker is trained on the newest weeks, on at
    most ``scale.train_users`` users.
    """
    settings, loaded = state.settings, state.data
    data, windows = _model_data(state), _windows(state)
    if state.gated is not None and settings.gate.publish_gated_ranker:
        parts = (state.serving_parts or start_serving_parts(state)).result()
        state.model = two_stage.with_gated_ranker(state.gated.model, parts, windows)
        state.record.metrics["ranker_source"] = "gate"
    else:
        sample = sharding.sample_users(data.transactions, loaded.users, settings.scale.train_users)
        model = two_stage.train_two_stage(data.with_transactions(sample), windows, settings)
        if sample is not data.transactions:  # stage 1 on its own sample of everyone
            model.stage1_for_scoring = two_stage.fit_scoring_stage1(
                data, windows, settings, n_users=loaded.users
            )
        state.model = model
        state.record.metrics["ranker_source"] = "trained"
    if state.model.forward_plan_features != state.forward_plans:
        msg = "the model's forward plan features differ from the run's decision"
        raise RuntimeError(msg)
    state.popular = driver_tables.popular_by_parts(
        user_parts(state), data.catalogue, settings.publish.top_n
    )
    nonempty(len(state.popular), "train", "popular fallback items")
    return 1


def save(state: RunState) -> int:
    """The models and the manifest under ``runs/<run_id>`` (proves the disk is writable)."""
    if state.model is None:
        msg = "stage order: train must run before save"
        raise RuntimeError(msg)
    record = state.record
    try:
        two_stage.save_model(state.model, record.models_dir)
    except OSError as exc:
        msg = f"cannot save the models under {record.models_dir}: {exc}"
        raise DataError(msg, fix="free disk space or make the runs directory writable") from exc
    records.write_manifest(record)
    return 1


def score_and_publish(state: RunState) -> int:
    """Every user's top k, shard by shard, into one new Redis version flipped live once.

    With ``--dry-run`` the shards are scored and written to ``recommendations.parquet/``
    only. Each shard's recommendations are written there in both cases.
    """
    settings, loaded = state.settings, state.data
    if state.model is None:
        msg = "stage order: train must run before score_and_publish"
        raise RuntimeError(msg)
    context = shard_context.build_context(
        state.model,
        _model_data(state),
        settings,
        sharding.shard_count(loaded.users, settings.scale.shard_users),
        shards_dir=run_shards.location(settings, state.record) if shards_on_disk(state) else None,
    )
    context.output_dir = state.record.run_dir / RECOMMENDATIONS_FILE
    context.expected_users = loaded.users
    executor = executors.make_executor(settings)
    # The users of each shard are read from its own rows when it runs (None): no list of
    # every customer on the driver.
    if state.dry_run or state.client is None:
        scored = executors.score_shards(context, None, executor)
        state.record.shard_peak_memory_mb = scored.peak_memory_mb
        state.users = nonempty(scored.users, "score_and_publish", "recommendations")
        return state.users
    if isinstance(executor, executors.LocalExecutor):
        context.driver_client = state.client  # the same server as begin and flip
    published = executors.publish_shards(
        context, None, executor, state.client, state.popular, _version_meta(state)
    )
    state.version, state.users = published.version, published.users
    state.record.shard_peak_memory_mb = published.peak_memory_mb
    state.record.version = published.version
    return state.users


def item_parts(state: RunState) -> int:
    """Parts of whole items for the prefilter's item statistics over every raw line: 1 in
    memory, else one per ``scale.in_memory_rows`` lines (their hash tables hold one part at
    a time; the lines are read once, whatever the count)."""
    loaded = state.data
    return 1 if loaded.in_memory else -(-loaded.rows // state.settings.scale.in_memory_rows)


def user_parts(state: RunState) -> list[pl.LazyFrame]:
    """The catalogue-applied lines in parts of whole users: the shard files out of core (the
    driver reads one at a time), else the one frame in memory."""
    if state.data.in_memory:
        return [_model_data(state).transactions]
    shards_dir = run_shards.location(state.settings, state.record)
    n_shards = sharding.shard_count(state.data.users, state.settings.scale.shard_users)
    return [sharding.scan_shard(shards_dir, s) for s in range(n_shards)]


def _model_data(state: RunState) -> two_stage.ModelData:
    """The catalogue-applied purchases, the catalogue and the side tables of this run."""
    if state.tx_cat is None or state.catalogue is None:
        msg = "stage order: load and prefilter must run first"
        raise RuntimeError(msg)
    dataset, windows = state.data.dataset, _windows(state)
    if state.forward_plans and state.plan_tables is None:
        horizons = plan_features.model_horizons(
            windows.history_end, windows.target_end, state.settings.split
        )
        state.plan_tables = plan_features.plan_tables(
            dataset.plans, state.catalogue.lazy().select(C.ITEM), horizons
        )
    return two_stage.ModelData(
        state.tx_cat, state.catalogue.lazy(), dataset.items, dataset.users, state.plan_tables
    )


def _windows(state: RunState) -> split.Windows:
    if state.windows is None:
        msg = "stage order: load must run first"
        raise RuntimeError(msg)
    return state.windows


def _version_meta(state: RunState) -> dict[str, Any]:
    """The run's fields of the version's meta hash."""
    record, loaded = state.record, state.data
    return {
        "run_id": record.run_id,
        "data_source": loaded.dataset.name,
        "first_day": loaded.first_day,
        "last_day": loaded.last_day,
        "run_date": state.run_date.isoformat() if state.run_date else None,
        "forward_plan_features": state.forward_plans,
        "plan_features": record.data.get("plan_features"),
        "metrics": {k: v for k, v in record.metrics.items() if k != "gate"},
        "durations": {s.name: round(s.seconds, 3) for s in record.stages},
        "code_version": _code_version(),
    }


def _code_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("recsys-batch")
    except Exception:  # noqa: BLE001 - metadata is optional (source checkout)
        return "unknown"


def shards_on_disk(state: RunState) -> bool:
    """Whether the shard inputs are written as files: out of core, or for Dask workers
    (which get the location, never the transactions)."""
    return not state.data.in_memory or state.settings.scale.executor == "dask"
