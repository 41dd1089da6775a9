"""``recsys nightly-batch`` out of core (issue #8): shards on disk, sampled training.

Above ``scale.in_memory_rows`` transactions the batch streams the catalogue, writes the
catalogue-applied transactions one parquet folder per shard and scores each shard from its
own folder. With every user in the training sample it must publish exactly what the
in-memory path publishes; with a small sample it still serves every user.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fakeredis
import polars as pl
import pytest
import redis
from polars.testing import assert_frame_equal

from recsys_batch.config import Settings, load_settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import Dataset, load_dataset
from recsys_batch.publish import keys, status, store
from recsys_batch.run import pipeline, quality_gate, run_shards, sharding, stages

pytestmark = pytest.mark.integration

USERS = 160


def _settings(tmp_path: Path, redis_url: str, key_prefix: str, **scale: Any) -> Settings:
    return load_settings(
        data={"source": "synthetic", "synthetic_users": USERS, "synthetic_seed": 3},
        prefilter={"min_user_share": 0.01},
        candidates={"als": {"iterations": 3, "factors": 16, "threads": 1}},
        ranker={"n_estimators": 30, "early_stopping_rounds": 10, "threads": 1},
        scale={"shard_users": 50, **scale},
        run={"runs_dir": str(tmp_path / "runs"), "lock_file": str(tmp_path / "lock")},
        redis={"url": redis_url, "key_prefix": key_prefix},
    )


def _published(client: store.Client, settings: Settings) -> pl.DataFrame:
    version = status.live_version(client, settings.redis)
    assert version is not None
    users = status.version_user_ids(client, version, settings.redis)
    stored = status.user_items(client, version, users, settings.redis)
    rows = [(user, keys.encode_items(items)) for user, items in stored.items()]
    return pl.DataFrame(rows, schema={C.USER: pl.Int64, "items": pl.String}, orient="row").sort(
        C.USER
    )


def _run(settings: Settings) -> tuple[pipeline.RunResult, pl.DataFrame]:
    result = pipeline.run_nightly(settings)
    client = store.connect(settings.redis)
    try:
        return result, _published(client, settings)
    finally:
        client.close()


def _recommendations(result: pipeline.RunResult) -> pl.DataFrame:
    """The run's ``recommendations.parquet`` folder (one file per shard), as one frame."""
    folder = result.run_dir / stages.RECOMMENDATIONS_FILE
    assert folder.is_dir()
    return pl.read_parquet(folder).sort(C.USER, C.RANK)


def test_out_of_core_publishes_what_the_in_memory_path_publishes(
    tmp_path: Path, real_redis: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    in_memory, expected = _run(_settings(tmp_path / "a", redis_url, key_prefix))
    out_of_core, got = _run(_settings(tmp_path / "b", redis_url, key_prefix, in_memory_rows=20_000))

    manifest = json.loads((out_of_core.run_dir / "manifest.json").read_text())
    assert manifest["data"]["in_memory"] is False
    assert manifest["data"]["rows"] > 3 * 20_000  # the item stats ran in 4+ parts
    assert json.loads((in_memory.run_dir / "manifest.json").read_text())["data"]["in_memory"]
    assert out_of_core.users == in_memory.users == expected.height == USERS
    assert_frame_equal(got, expected)
    assert_frame_equal(_recommendations(out_of_core), _recommendations(in_memory))
    # The shard folders and the prefilter's item parts are scratch space: gone once the run ends.
    assert not run_shards.dir_of(out_of_core.run_dir).exists()
    assert not (out_of_core.run_dir / stages.ITEM_PARTS_DIR).exists()


def test_sampled_training_and_gate_still_serve_every_user(
    tmp_path: Path, real_redis: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    settings = _settings(tmp_path, redis_url, key_prefix, in_memory_rows=20_000, train_users=60)
    result, published = _run(settings)

    assert result.users == USERS
    assert published.height == USERS
    # The gate's backtest ran on the stable sample of ~60 users, not on everyone.
    transactions = load_dataset(settings.data).transactions
    sample = sharding.sample_users(transactions, USERS, 60)
    sampled = sample.select(pl.col(C.USER).n_unique()).collect().item()
    assert 30 <= sampled < USERS
    assert 0 < result.metrics["users"] <= sampled
    # The gate read the sample from a file of its rows (removed after the gate): the same
    # measurement as a backtest on the sample in memory.
    assert not (result.run_dir / stages.GATE_SAMPLE_FILE).exists()
    dataset = load_dataset(settings.data)
    in_memory = Dataset(sample.collect().lazy(), dataset.items, dataset.users, dataset.name)
    measured = quality_gate.backtest_outcome(in_memory, settings).metrics
    # (up to the order of a float mean over users)
    assert result.metrics["precision@5"] == pytest.approx(measured["precision@5"], rel=1e-12)
    assert result.metrics["users"] == measured["users"]
    lists = published["items"].str.split(",")
    assert lists.list.len().min() >= 1
    assert (lists.list.len() == lists.list.unique().list.len()).all()


def test_shards_write_through_the_driver_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # settings.redis names a port nobody listens on: the local executor's shards must write
    # through the driver's client, the one that opens the version and flips the pointer.
    settings = _settings(tmp_path, "redis://127.0.0.1:1/0", "injected")
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(quality_gate, "connect_for_gate", lambda settings, dry_run: client)
    result = pipeline.run_nightly(settings)

    assert result.users == USERS
    assert _published(client, settings).height == USERS
