"""Sharded scoring and publishing: local executor vs a 2-worker Dask LocalCluster (issue #8).

One small synthetic data set (150 users), one tiny two-stage model, a real Redis. The same
shards published by either executor give byte-identical user keys, equal to what the
unsharded ``two_stage.recommend`` produces; a shard whose Redis connection fails is retried,
one that keeps failing flips nothing, and a bug in a shard is neither retried nor reported as
a failed publish.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis
from polars.testing import assert_frame_equal

from recsys_batch.config import RedisConfig, Settings, load_settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import load_dataset
from recsys_batch.model import split, two_stage
from recsys_batch.model.prefilter import apply_catalogue, prefilter
from recsys_batch.publish import keys, status, store
from recsys_batch.run import dask_executor as D
from recsys_batch.run import executors as E
from recsys_batch.run import shard_context, shard_retries, sharding
from recsys_batch.run import shard_task as T
from tests.nightly import expected_values, stored_values

pytestmark = pytest.mark.integration

N_SHARDS = 3


@dataclass
class Trained:
    settings: Settings
    model: Any
    tx: pl.DataFrame
    items: pl.DataFrame | None
    users: pl.DataFrame | None
    catalogue: pl.DataFrame
    user_ids: pl.DataFrame
    expected: pl.DataFrame
    """Unsharded ``two_stage.recommend`` of every user."""


@pytest.fixture(scope="module")
def trained() -> Trained:
    settings = load_settings(
        data={"source": "synthetic", "synthetic_users": 150, "synthetic_seed": 7},
        prefilter={"min_user_share": 0.01},
        candidates={"als": {"iterations": 3, "factors": 16, "threads": 1}},
        ranker={"n_estimators": 30, "early_stopping_rounds": 10, "threads": 1},
    )
    dataset = load_dataset(settings.data)
    tx = dataset.transactions.collect()
    catalogue = prefilter(tx.lazy(), dataset.items, settings.prefilter).catalogue.collect()
    tx_cat = apply_catalogue(tx.lazy(), catalogue.lazy(), settings.prefilter).collect()
    first, last = split.week_range(tx.lazy())
    windows = split.production_windows(first, last, settings.split)
    items = dataset.items.collect() if dataset.items is not None else None
    users = dataset.users.collect() if dataset.users is not None else None
    data = two_stage.ModelData(
        tx_cat.lazy(),
        catalogue.lazy(),
        items.lazy() if items is not None else None,
        users.lazy() if users is not None else None,
    )
    model = two_stage.train_two_stage(data, windows, settings)
    user_ids = tx.select(C.USER).unique().sort(C.USER)
    expected = two_stage.recommend(model, data, user_ids.lazy(), settings)
    return Trained(settings, model, tx_cat, items, users, catalogue, user_ids, expected)


@pytest.fixture
def settings(trained: Trained, redis_url: str, key_prefix: str) -> Settings:
    redis_cfg = trained.settings.redis.model_copy(
        update={"url": redis_url, "key_prefix": key_prefix, "retries": 0}
    )
    return trained.settings.model_copy(update={"redis": redis_cfg})


@pytest.fixture
def client(settings: Settings, real_redis: redis.Redis) -> Iterator[store.Client]:
    connected = store.connect(settings.redis)
    yield connected
    connected.close()


def context(trained: Trained, settings: Settings) -> T.ShardContext:
    data = two_stage.ModelData(
        trained.tx.lazy(),
        trained.catalogue.lazy(),
        trained.items.lazy() if trained.items is not None else None,
        trained.users.lazy() if trained.users is not None else None,
    )
    return shard_context.build_context(trained.model, data, settings, N_SHARDS)


def on_disk_context(trained: Trained, settings: Settings, folder: Path) -> T.ShardContext:
    """The context of shards written to ``folder``, as worker processes read them."""
    sharding.write_shards(trained.tx.lazy(), N_SHARDS, folder)
    data = two_stage.ModelData(
        trained.tx.lazy(),
        trained.catalogue.lazy(),
        trained.items.lazy() if trained.items is not None else None,
        trained.users.lazy() if trained.users is not None else None,
    )
    return shard_context.build_context(trained.model, data, settings, N_SHARDS, shards_dir=folder)


def published_values(
    client: store.Client, version: str, settings: Settings
) -> dict[int, list[int]]:
    """Every user of ``version`` and their stored items (the format-2 read helpers)."""
    return stored_values(client, version, settings.redis.key_prefix)


def publish_with(
    executor: E.Executor,
    trained: Trained,
    settings: Settings,
    client: store.Client,
    fn: T.ShardFn = T.run_shard,
) -> E.ShardedRun:
    return E.publish_shards(
        context(trained, settings),
        trained.user_ids.lazy(),
        executor,
        client,
        popular=[1, 2, 3],
        meta={"run_id": "test"},
        fn=fn,
    )


def first_k(recs: pl.DataFrame, k: int = 5) -> pl.DataFrame:
    """The first ``k`` of each user's published top N, without the reasons: what
    ``two_stage.recommend`` (``ranker.top_k`` = 5) returns for the same users (#18)."""
    return recs.filter(pl.col(C.RANK) <= k).drop("reason").sort(C.USER, C.RANK)


def dask() -> D.DaskExecutor:
    return D.DaskExecutor(address=None, workers=2, retries=1, processes=False)


def test_sharded_scores_equal_unsharded_recommend(trained: Trained) -> None:
    run = E.score_shards(
        context(trained, trained.settings), trained.user_ids.lazy(), E.LocalExecutor()
    )
    assert len(run.results) == N_SHARDS
    assert_frame_equal(first_k(run.recommendations()), trained.expected.sort(C.USER, C.RANK))


def test_dask_publishes_exactly_what_local_publishes(
    trained: Trained, settings: Settings, client: store.Client
) -> None:
    local = publish_with(E.LocalExecutor(), trained, settings, client)
    by_local = published_values(client, local.version or "", settings)
    on_dask = publish_with(dask(), trained, settings, client)
    by_dask = published_values(client, on_dask.version or "", settings)

    top_k = trained.settings.ranker.top_k
    assert {u: items[:top_k] for u, items in by_local.items()} == expected_values(trained.expected)
    assert by_dask == by_local
    assert status.live_version(client, settings.redis) == on_dask.version
    assert status.previous_version(client, settings.redis) == local.version
    info = status.version_info(client, on_dask.version or "", settings.redis)
    assert info.state == keys.STATE_COMPLETE
    assert info.users == len(by_dask) == trained.user_ids.height


def test_a_published_night_logs_none_of_distributed_s_info(
    trained: Trained, settings: Settings, client: store.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """At INFO (the CLI's level without ``--debug``) a published Dask night logs nothing of
    distributed below WARNING: its in-process scheduler's chatter and the ``CommClosedError``
    traceback it logs at INFO when the client closes (a teardown race, every night or
    nearly). Catches the night run without ``_quiet_distributed``, or its level left set."""
    caplog.set_level(logging.INFO)
    import distributed  # noqa: F401, PLC0415 - sets its loggers' levels on import

    level = logging.getLogger("distributed").level
    run = publish_with(dask(), trained, settings, client)
    assert status.live_version(client, settings.redis) == run.version
    chatter = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("distributed") and r.levelno < logging.WARNING
    ]
    assert chatter == []
    assert logging.getLogger("distributed").level == level  # left as it was found


FAILURES: dict[str, int] = {}


def flaky(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
    """Shard 1 fails on its first attempt (per test, keyed by the version)."""
    key = f"{ctx.version}:{shard}"
    if shard == 1 and FAILURES.get(key, 0) == 0:
        FAILURES[key] = 1
        msg = "worker lost"
        raise ConnectionError(msg)
    return T.run_shard(ctx, shard, users)


def broken(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
    """Shard 2's Redis connection always fails."""
    if shard == 2:
        msg = "Connection reset by peer"
        raise redis.ConnectionError(msg)
    return T.run_shard(ctx, shard, users)


BUGGY_CALLS: list[str] = []


def buggy(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
    """Shard 1 has a bug (a ``TypeError``) after shard 0 was written."""
    BUGGY_CALLS.append(f"{ctx.version}:{shard}")
    if shard == 1:
        msg = "unsupported operand type(s) for +: 'int' and 'str'"
        raise TypeError(msg)
    return T.run_shard(ctx, shard, users)


def dies_once(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
    """Shard 0's first attempt SIGKILLs its worker process (a ``died`` file beside the shards
    tells the next attempt it happened)."""
    assert ctx.shards_dir is not None
    if shard == 0:
        try:
            (Path(str(ctx.shards_dir)).parent / "died").open("x").close()
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return T.run_shard(ctx, shard, users)


def test_a_context_lost_with_its_worker_is_scattered_again(
    trained: Trained, settings: Settings, client: store.Client, tmp_path: Path
) -> None:
    """Regression (CI, 2026-12-07): one worker process holds the only copy of the scattered
    context (the scheduler's memory manager keeps one copy, however broadcast) and shard 0
    kills it. The scheduler forgets every task that needed the context; the driver got
    ``FutureCancelledError`` and the run failed as a bug. It scatters the context again and
    resubmits them: every user is published. Catches dropping ``scatter_again``."""
    ctx = on_disk_context(trained, settings, tmp_path / "shards")
    executor = D.DaskExecutor(address=None, workers=1, retries=1, processes=True)
    run = E.publish_shards(
        ctx, trained.user_ids.lazy(), executor, client, [1, 2, 3], {"run_id": "t"}, fn=dies_once
    )
    assert (tmp_path / "died").exists()
    assert status.live_version(client, settings.redis) == run.version
    top_k = trained.settings.ranker.top_k
    published = published_values(client, run.version or "", settings)
    assert {u: items[:top_k] for u, items in published.items()} == expected_values(trained.expected)


@pytest.mark.parametrize("executor", [E.LocalExecutor(retries=1), "dask"], ids=["local", "dask"])
def test_a_failed_shard_is_retried(
    executor: E.Executor | str, trained: Trained, settings: Settings, client: store.Client
) -> None:
    chosen = dask() if executor == "dask" else executor
    assert not isinstance(chosen, str)
    run = publish_with(chosen, trained, settings, client, flaky)
    assert f"{run.version}:1" in FAILURES
    assert status.live_version(client, settings.redis) == run.version
    assert len(published_values(client, run.version or "", settings)) == trained.user_ids.height


@pytest.mark.parametrize("executor", [E.LocalExecutor(retries=1), "dask"], ids=["local", "dask"])
def test_a_shard_that_keeps_failing_flips_nothing(
    executor: E.Executor | str, trained: Trained, settings: Settings, client: store.Client
) -> None:
    chosen = dask() if executor == "dask" else executor
    assert not isinstance(chosen, str)
    live = publish_with(E.LocalExecutor(), trained, settings, client)
    with pytest.raises(shard_retries.ShardError, match="shard 2 failed after 2 attempt"):
        publish_with(chosen, trained, settings, client, broken)
    assert status.live_version(client, settings.redis) == live.version
    assert status.all_versions(client, settings.redis) == [live.version]
    assert len(published_values(client, live.version or "", settings)) == trained.user_ids.height


@pytest.mark.parametrize("executor", [E.LocalExecutor(retries=2), "dask"], ids=["local", "dask"])
def test_a_bug_in_a_shard_is_raised_once_and_flips_nothing(
    executor: E.Executor | str, trained: Trained, settings: Settings, client: store.Client
) -> None:
    """Regression (#29): a bug in a shard was retried and reported as ``ShardError`` (exit 4,
    "Redis unavailable"); on Dask, Dask's task retries reran it. It is raised as it is, from
    the one attempt, and the half-written version is removed."""
    chosen = dask() if executor == "dask" else executor
    assert not isinstance(chosen, str)
    live = publish_with(E.LocalExecutor(), trained, settings, client)
    BUGGY_CALLS.clear()
    with pytest.raises(TypeError, match="unsupported operand"):
        publish_with(chosen, trained, settings, client, buggy)
    assert [call.split(":")[1] for call in BUGGY_CALLS].count("1") == 1  # never retried
    assert status.live_version(client, settings.redis) == live.version
    assert status.all_versions(client, settings.redis) == [live.version]


HELD_BEFORE: dict[int, list[str]] = {}


def counts_held_results(ctx: T.ShardContext, shard: int, users: pl.DataFrame) -> T.ShardResult:
    """Before scoring shard k, wait (10 s at most) until the worker holds no task of a shard
    below k - 1 (whose result the driver has read by then), and record what it still held."""
    from distributed import get_worker  # noqa: PLC0415 - optional at import

    def older() -> list[str]:
        return [
            key
            for key in list(get_worker().data)
            if isinstance(key, str)
            and key.startswith("shard-")
            and int(key.split("-")[2]) <= shard - 2
        ]

    deadline = time.monotonic() + 10
    while older() and time.monotonic() < deadline:
        time.sleep(0.05)
    HELD_BEFORE[shard] = older()
    return T.run_shard(ctx, shard, users)


def test_a_worker_forgets_each_shard_once_the_driver_has_read_it(
    trained: Trained, settings: Settings, client: store.Client
) -> None:
    """Regression (#28): the driver held every shard's future until the night ended, so each
    worker kept every list it scored (and the task's stage-1 slice): 3.96 GB per worker at
    1M customers. One worker, one thread: shard 2 starts with shard 0's task forgotten.
    Catches dropping ``_ShardTasks.release``."""
    HELD_BEFORE.clear()
    executor = D.DaskExecutor(address=None, workers=1, retries=0, processes=False)
    run = publish_with(executor, trained, settings, client, counts_held_results)
    assert status.live_version(client, settings.redis) == run.version
    assert HELD_BEFORE == {0: [], 1: [], 2: []}


def test_shards_write_their_recommendations_when_asked(trained: Trained, tmp_path: Path) -> None:
    ctx = context(trained, trained.settings)
    ctx.output_dir = tmp_path / "recommendations.parquet"
    E.score_shards(ctx, trained.user_ids.lazy(), E.LocalExecutor())
    assert len(list(ctx.output_dir.glob("shard=*.parquet"))) == N_SHARDS
    saved = pl.read_parquet(ctx.output_dir).sort(C.USER, C.RANK)
    assert_frame_equal(first_k(saved), trained.expected.sort(C.USER, C.RANK))


def test_nightly_batch_cli_dask_equals_local(
    tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    """``recsys nightly-batch --executor dask`` publishes what ``--executor local`` does."""
    from typer.testing import CliRunner  # noqa: PLC0415

    from cli.main import app  # noqa: PLC0415

    env = {
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": key_prefix,
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
        "RECSYS_DATA__SYNTHETIC_USERS": "150",
        "RECSYS_DATA__SYNTHETIC_SEED": "7",
        "RECSYS_PREFILTER__MIN_USER_SHARE": "0.01",
        "RECSYS_CANDIDATES__ALS__ITERATIONS": "3",
        "RECSYS_CANDIDATES__ALS__FACTORS": "16",
        "RECSYS_CANDIDATES__ALS__THREADS": "1",
        "RECSYS_RANKER__N_ESTIMATORS": "30",
        "RECSYS_RANKER__EARLY_STOPPING_ROUNDS": "10",
        "RECSYS_RANKER__THREADS": "1",
        "RECSYS_SCALE__SHARD_USERS": "50",
    }
    runner = CliRunner()
    values = {}
    saved = {}
    peaks: dict[str, tuple[float, float]] = {}
    for executor in ("local", "dask"):
        result = runner.invoke(
            app,
            ["nightly-batch", "--source", "synthetic", "--no-gate", "--executor", executor]
            + ["--log-format", "json"],
            env=env,
        )
        assert result.exit_code == 0, result.output
        run_dir = Path(json.loads(result.stdout)["run_dir"])
        manifest = json.loads((run_dir / "manifest.json").read_text())
        peaks[executor] = (manifest["shard_peak_memory_mb"], manifest["peak_memory_mb"])
        folder = run_dir / "recommendations.parquet"
        assert sorted(p.name for p in folder.iterdir()) == [
            f"shard={n:05d}.parquet" for n in range(N_SHARDS)
        ]
        saved[executor] = pl.read_parquet(folder).sort(C.USER, C.RANK)
        cfg = RedisConfig(url=redis_url, key_prefix=key_prefix)
        version = status.live_version(real_redis, cfg)
        assert version is not None
        settings = Settings(redis=cfg)
        values[executor] = published_values(real_redis, version, settings)
        assert status.version_info(real_redis, version, cfg).users == len(values[executor])
    assert len(values["local"]) == 150
    assert values["dask"] == values["local"]
    assert_frame_equal(saved["dask"], saved["local"])
    assert values["local"] == expected_values(saved["local"])
    # The shards' peak is the scoring processes': this one's with the local executor (at
    # most its peak over the night), the workers' with Dask (recorded, not left out).
    shard_peak, driver_peak = peaks["local"]
    assert 0 < shard_peak <= driver_peak
    assert peaks["dask"][0] > 0


def test_nightly_batch_cli_rejects_an_unknown_executor() -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from cli.main import app  # noqa: PLC0415

    result = CliRunner().invoke(app, ["nightly-batch", "--executor", "spark", "--dry-run"])
    assert result.exit_code == 2
    assert "local or dask" in result.output


def test_workers_get_the_shard_location_not_the_transactions(
    trained: Trained, tmp_path: Path
) -> None:
    """The pickled context holds the model and small tables, and a path (#17)."""
    ctx = on_disk_context(trained, trained.settings, tmp_path / "shards")
    shipped = D.DaskExecutor().shipped(ctx)
    assert shipped.partitions is None and shipped.transactions is None
    size = len(pickle.dumps(shipped, protocol=5))
    model_size = len(pickle.dumps(shipped.model, protocol=5))
    data_size = len(pickle.dumps(trained.tx, protocol=5))
    # Besides the model (its per-user parts are issue #17's open point), small tables only.
    # Besides the model: tables per item or per user (items, item features, side tables,
    # first buyers: about a quarter of the lines' size on this small data), not one line.
    assert size - model_size < data_size / 3, (size, model_size, data_size)
    in_memory = D.DaskExecutor(processes=False).shipped(context(trained, trained.settings))
    assert len(pickle.dumps(in_memory, protocol=5)) > size + data_size / 2  # what it saves
    run = E.score_shards(shipped, trained.user_ids.lazy(), E.LocalExecutor())
    assert_frame_equal(first_k(run.recommendations()), trained.expected.sort(C.USER, C.RANK))
