"""Stage 1 on a sample of users, the others folded in where their shard is scored (#28).

150 synthetic users, stage 1 fit on ~60 of them (``scale.stage1_users``): the shards (which
fold their users in from their own lines) give what scoring everybody at once gives, and
``recsys nightly-batch`` publishes every user, the same with the local executor and with a
Dask LocalCluster of worker processes (where the fold-in runs inside the workers' tasks).
"""

from __future__ import annotations

import json
import threading
import time
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
from recsys_batch.model.new_items import REASON
from recsys_batch.model.new_items_ranking import new_item_recommendations
from recsys_batch.model.prefilter import apply_catalogue, prefilter
from recsys_batch.publish import status
from recsys_batch.run import beside_gate, shard_context, shard_task, sharding
from recsys_batch.run import executors as E
from tests.integration.test_dask_executor import N_SHARDS, Trained, first_k
from tests.nightly import expected_values, stored_values

pytestmark = pytest.mark.integration

SAMPLE = 60


@pytest.fixture(scope="module")
def trained() -> Trained:
    """``test_dask_executor``'s model and data, stage 1 fit on ~60 of the 150 users."""
    settings = load_settings(
        data={"source": "synthetic", "synthetic_users": 150, "synthetic_seed": 7},
        prefilter={"min_user_share": 0.01},
        candidates={"als": {"iterations": 3, "factors": 16, "threads": 1}},
        ranker={"n_estimators": 30, "early_stopping_rounds": 10, "threads": 1},
        scale={"stage1_users": SAMPLE},
    )
    dataset = load_dataset(settings.data)
    tx = dataset.transactions.collect()
    catalogue = prefilter(tx.lazy(), dataset.items, settings.prefilter).catalogue.collect()
    tx_cat = apply_catalogue(tx.lazy(), catalogue.lazy(), settings.prefilter).collect()
    windows = split.production_windows(*split.week_range(tx.lazy()), settings.split)
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


def test_users_outside_the_sample_get_more_than_the_popular_list(trained: Trained) -> None:
    """Stage 1 knows ~60 users; the others' lists hold their own and ALS items, not only
    the popular candidates an unknown user gets. Catches: no fold-in at scoring."""
    stage1 = trained.model.stage1_for_scoring
    assert 30 < len(stage1.users) < 100
    popular = stage1.popular.head(trained.settings.candidates.n_popular)[C.ITEM]
    outside = trained.expected.filter(~pl.col(C.USER).is_in(stage1.users.ids.tolist()))
    personal = outside.filter(~pl.col(C.ITEM).is_in(popular.implode()))[C.USER].n_unique()
    assert outside[C.USER].n_unique() == 150 - len(stage1.users)
    assert personal > 0.9 * outside[C.USER].n_unique()


def test_sharded_fold_in_equals_unsharded_recommend(trained: Trained, tmp_path: Path) -> None:
    """Each shard folds in its own users from the shard's files (a Dask task's path) and
    gives the lists of one fold-in of everybody at once. Catches: a shard folding in with
    the sentinel's or another shard's lines, factors depending on the shard's users."""
    sharding.write_shards(trained.tx.lazy(), N_SHARDS, tmp_path / "shards")
    data = two_stage.ModelData(
        trained.tx.lazy(),
        trained.catalogue.lazy(),
        trained.items.lazy() if trained.items is not None else None,
        trained.users.lazy() if trained.users is not None else None,
    )
    ctx = shard_context.build_context(
        trained.model, data, trained.settings, N_SHARDS, shards_dir=tmp_path / "shards"
    )
    scored = E.score_shards(ctx, trained.user_ids.lazy(), E.LocalExecutor())
    assert_frame_equal(first_k(scored.recommendations()), trained.expected.sort(C.USER, C.RANK))


def model_data(trained: Trained) -> two_stage.ModelData:
    return two_stage.ModelData(
        trained.tx.lazy(),
        trained.catalogue.lazy(),
        trained.items.lazy() if trained.items is not None else None,
        trained.users.lazy() if trained.users is not None else None,
    )


def test_new_items_of_users_outside_the_sample_come_from_their_purchases(
    trained: Trained,
) -> None:
    """Their new-items lists hold co-purchase, ALS and category items, as the sampled users'
    do, not only the trending items an unknown user gets. Catches: no fold-in in the
    new-items path (it was missing: 60% of 100x customers got trending items only)."""
    stage1 = trained.model.stage1_for_scoring
    outside = trained.user_ids.filter(~pl.col(C.USER).is_in(stage1.users.ids.tolist()))
    lists = new_item_recommendations(
        trained.model, model_data(trained), outside.lazy(), trained.settings
    )
    personal = lists.filter(pl.col(REASON) != "trending")[C.USER].n_unique()
    assert lists[C.USER].n_unique() == outside.height
    assert personal > 0.9 * outside.height


@pytest.mark.parametrize("n_shards", [1, N_SHARDS])
def test_sharded_new_items_equal_unsharded(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_shards: int
) -> None:
    """Each shard's new-items lists (its users folded in once, for both lists) are those of
    one fold-in of everybody at once; a run of one shard computes them on a thread beside
    its main list, a larger run's shards after it. Catches: the shard's and the unsharded
    new-items path folding in differently (either one skipping it), item families that
    differ by shard, a one-shard run computing them on the task's thread (or every shard
    of a larger run on a second one)."""
    sharding.write_shards(trained.tx.lazy(), n_shards, tmp_path / "shards")
    data = model_data(trained)
    ctx = shard_context.build_context(
        trained.model, data, trained.settings, n_shards, shards_dir=tmp_path / "shards"
    )
    expected = new_item_recommendations(
        trained.model, data, trained.user_ids.lazy(), trained.settings
    )
    threads: list[str] = []
    shipped = shard_task.shard_new_items

    def recorded(*args: Any) -> pl.DataFrame:
        threads.append(threading.current_thread().name)
        return shipped(*args)

    monkeypatch.setattr(shard_task, "shard_new_items", recorded)
    parts = []
    for shard, users in E.plan_shards(trained.user_ids.lazy(), n_shards):
        _, new_items, _ = shard_task.shard_recommendations(ctx, shard, users)
        assert new_items is not None
        parts.append(new_items)
    sharded = pl.concat(parts).sort(C.USER, C.RANK)
    assert_frame_equal(sharded, expected.sort(C.USER, C.RANK))
    beside = [name.startswith(beside_gate.THREAD_NAME) for name in threads]
    assert beside == [n_shards == 1] * len(parts)


def test_a_failed_main_list_returns_once_the_new_items_thread_ended(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-shard run whose main list fails raises only when its new-items thread is done:
    nothing of the task still computes when the executor retries it or the run reports the
    error. Catches: the error raised while the thread runs on."""
    ctx = shard_context.build_context(trained.model, model_data(trained), trained.settings, 1)
    ended = threading.Event()
    shipped = shard_task.shard_new_items

    def slow(*args: Any) -> pl.DataFrame:
        time.sleep(0.5)
        lists = shipped(*args)
        ended.set()
        return lists

    def broken(*_: Any) -> pl.DataFrame:
        raise RuntimeError("main list failed")

    monkeypatch.setattr(shard_task, "shard_new_items", slow)
    monkeypatch.setattr(shard_task, "main_list", broken)
    ((shard, users),) = E.plan_shards(trained.user_ids.lazy(), 1)
    with pytest.raises(RuntimeError, match="main list failed"):
        shard_task.shard_recommendations(ctx, shard, users)
    assert ended.is_set()


def test_nightly_batch_with_a_stage1_sample_publishes_every_user(
    tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    """``recsys nightly-batch`` with ``scale.stage1_users`` below the users: every user is
    published, the same values with ``--executor local`` and ``--executor dask``."""
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
        "RECSYS_SCALE__STAGE1_USERS": str(SAMPLE),
    }
    runner = CliRunner()
    values = {}
    saved = {}
    for executor in ("local", "dask"):
        result = runner.invoke(
            app,
            ["nightly-batch", "--source", "synthetic", "--no-gate", "--executor", executor]
            + ["--log-format", "json"],
            env=env,
        )
        assert result.exit_code == 0, result.output
        folder = Path(json.loads(result.stdout)["run_dir"]) / "recommendations.parquet"
        saved[executor] = pl.read_parquet(folder).sort(C.USER, C.RANK)
        cfg = RedisConfig(url=redis_url, key_prefix=key_prefix)
        version = status.live_version(real_redis, cfg)
        assert version is not None
        values[executor] = stored_values(real_redis, version, Settings(redis=cfg).redis.key_prefix)
    assert len(values["local"]) == 150
    assert values["dask"] == values["local"]
    assert_frame_equal(saved["dask"], saved["local"])
    assert values["local"] == expected_values(saved["local"])
