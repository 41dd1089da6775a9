"""``run_nightly`` publishing the real two-stage model on small synthetic data (#5, #15).

Each test runs the shipped night against the real Redis under its own key prefix, then
compares what Redis holds with the recommendations the run saved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.config import Settings
from recsys_batch.errors import EmptyStageError, QualityGateError
from recsys_batch.publish import keys, status
from recsys_batch.run import pipeline, records, run_shards
from tests.nightly import (
    expected_values,
    saved_recommendations,
    shard_files,
    small_run_settings,
    stored_values,
    user_bucket_keys,
    version_keys,
)
from tests.small import small_env

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, key_prefix: str) -> Settings:
    return small_run_settings(tmp_path, redis_url, key_prefix)


def prefix_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    """Every key under ``prefix`` but the run history ``P:runs``, which every run writes."""
    runs = keys.runs_key(prefix).encode()
    return [k for k in client.scan_iter(match=f"{prefix}:*", count=10_000) if k != runs]


def run_history(client: redis.Redis, prefix: str) -> list[str]:
    """The statuses in ``P:runs``, newest first (#19)."""
    return [json.loads(v)["status"] for v in client.lrange(keys.runs_key(prefix), 0, -1)]


def statuses(settings: Settings) -> list[str]:
    runs = sorted(settings.run.runs_dir.iterdir())
    return [records.read_manifest(run)["status"] for run in runs]


class TestPublishedRun:
    def test_every_user_published_as_saved_and_each_stage_recorded(
        self, settings: Settings, real_redis: redis.Redis, key_prefix: str
    ) -> None:
        peak_before = records.peak_memory_mb()
        result = pipeline.run_nightly(settings)
        peak_after = records.peak_memory_mb()
        assert result.status == "published"
        assert status.live_version(real_redis, settings.redis) == result.version
        version = result.version or ""
        recs = saved_recommendations(result.run_dir)
        assert len(shard_files(result.run_dir)) >= 2  # 300 users in shards of 100
        expected = expected_values(recs)
        assert len(expected) == result.users == 300
        users = sorted(expected)
        assert stored_values(real_redis, version, key_prefix) == expected
        assert version_keys(real_redis, version, key_prefix) == user_bucket_keys(
            real_redis, version, key_prefix, users
        ) | {
            keys.popular_key(version, key_prefix),
            keys.items_key(version, key_prefix),
            keys.meta_key(version, key_prefix),
        }
        popular = keys.decode_items(real_redis.get(keys.popular_key(version, key_prefix)))
        assert len(popular) == settings.publish.top_n
        # Every user has a new-items list (#26): never an item of their main list that they
        # bought before (a repeat reason), at most publish.new_items long.
        new_lists = status.user_new_items(real_redis, version, users, settings.redis)
        assert set(new_lists) == set(users)
        assert max(len(v) for v in new_lists.values()) <= settings.publish.new_items
        repeats = recs.filter(pl.col("reason").str.starts_with("r"))
        for user, item in repeats.select("user_id", "item_id").iter_rows():
            assert item not in {i for i, _ in new_lists[user]}
        new_served = {item for listed in new_lists.values() for item, _ in listed}
        served = set(recs["item_id"]) | set(popular) | new_served
        items = real_redis.hkeys(keys.items_key(version, key_prefix))
        assert {int(i) for i in items} == served

        manifest = records.read_manifest(result.run_dir)
        assert manifest["status"] == "published"
        assert manifest["version"] == version
        assert [s["name"] for s in manifest["stages"]] == [name for name, _ in pipeline.STAGES]
        assert all(s["rows"] > 0 for s in manifest["stages"])
        # Each stage records this process's ru_maxrss in MiB when it ended: never below the
        # peak before the run, never above the run's own peak nor the one read after it
        # (catches a peak left at 0, kept in KiB, or a per-stage delta instead of the mark).
        peaks = [s["peak_mb"] for s in manifest["stages"]]
        assert round(peak_before, 1) <= min(peaks)
        assert max(peaks) <= manifest["peak_memory_mb"] <= round(peak_after, 1)
        precision = manifest["metrics"]["precision@5"]
        assert manifest["metrics"]["gate"]["value"] == precision >= 0.15

        info = status.version_info(real_redis, version, settings.redis)
        assert info.state == keys.STATE_COMPLETE
        assert info.users == 300
        assert info.meta["run_id"] == result.run_id
        assert (
            info.meta["data_source"]
            == manifest["data"]["source"]
            == "synthetic (users=300, seed=42)"
        )
        assert info.metrics["precision@5"] == precision
        assert "gate" not in info.metrics
        (run,) = [json.loads(v) for v in real_redis.lrange(keys.runs_key(key_prefix), 0, -1)]
        assert (run["run_id"], run["status"], run["version"]) == (
            result.run_id,
            "published",
            version,
        )
        assert (run["users"], run["gate"], run["gate_value"]) == (300, "passed", precision)
        assert run["seconds"] >= sum(s["seconds"] for s in manifest["stages"]) - 0.01
        durations = json.loads(info.meta["durations"])
        assert set(durations) == {name for name, _ in pipeline.STAGES} - {"score_and_publish"}
        assert not (result.run_dir / run_shards.SHARDS_DIR).exists()

    def test_dry_run_publishes_nothing_but_saves_recommendations(
        self, settings: Settings, real_redis: redis.Redis, key_prefix: str
    ) -> None:
        result = pipeline.run_nightly(settings, dry_run=True, gate=False)
        assert (result.status, result.version) == ("dry-run", None)
        assert prefix_keys(real_redis, key_prefix) == []
        assert run_history(real_redis, key_prefix) == ["dry-run"]
        recs = saved_recommendations(result.run_dir)
        assert len(shard_files(result.run_dir)) >= 2
        assert recs["user_id"].n_unique() == result.users == 300

    def test_empty_stage_stops_before_redis_is_touched(
        self, settings: Settings, real_redis: redis.Redis, key_prefix: str
    ) -> None:
        with pytest.raises(EmptyStageError, match="zero transactions") as info:
            pipeline.run_nightly(settings, run_date=date(2000, 1, 1))
        assert info.value.exit_code == 2
        assert prefix_keys(real_redis, key_prefix) == []
        assert statuses(settings) == ["failed"]
        assert run_history(real_redis, key_prefix) == ["failed"]


class TestQualityGate:
    def test_floor_refuses_and_nothing_is_published(
        self, tmp_path: Path, settings: Settings, real_redis: redis.Redis, key_prefix: str
    ) -> None:
        first = pipeline.run_nightly(settings, gate=False)
        keys_before = sorted(prefix_keys(real_redis, key_prefix))
        strict = small_run_settings(
            tmp_path, settings.redis.url or "", key_prefix, gate={"min_precision_at_5": 0.99}
        )
        with pytest.raises(QualityGateError, match="below the floor") as info:
            pipeline.run_nightly(strict)
        assert info.value.exit_code == 3
        assert status.live_version(real_redis, settings.redis) == first.version
        assert status.all_versions(real_redis, settings.redis) == [first.version]
        assert sorted(prefix_keys(real_redis, key_prefix)) == keys_before
        assert statuses(settings) == ["published", "gate-refused"]
        assert run_history(real_redis, key_prefix) == ["gate-refused", "published"]

    def test_relative_drop_against_the_live_version(
        self, settings: Settings, real_redis: redis.Redis, key_prefix: str
    ) -> None:
        live = pipeline.run_nightly(settings)
        measured = live.metrics["precision@5"]
        meta = keys.meta_key(live.version or "", key_prefix)

        def live_records(value: float) -> None:
            real_redis.hset(meta, "metrics", json.dumps({"precision@5": value}))

        live_records(measured * 1.2)  # the same model now measures > 10% below the live one
        with pytest.raises(QualityGateError, match="more than 10% below the live version"):
            pipeline.run_nightly(settings)
        assert status.live_version(real_redis, settings.redis) == live.version

        live_records(measured * 1.05)  # within 10%: published
        again = pipeline.run_nightly(settings)
        assert again.metrics["gate"]["live"] == pytest.approx(measured * 1.05)
        assert status.live_version(real_redis, settings.redis) == again.version
        assert statuses(settings) == ["published", "gate-refused", "published"]


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_restore_logging")
def test_cli_gate_refusal_exits_3_and_publishes_nothing(
    tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    env = {
        **small_env(),
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": key_prefix,
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
        "RECSYS_GATE__MIN_PRECISION_AT_5": "0.99",
    }
    result = CliRunner().invoke(app, ["nightly-batch", "--source", "synthetic"], env=env)
    assert result.exit_code == 3, result.output
    assert "quality gate refused" in result.output
    assert prefix_keys(real_redis, key_prefix) == []
    assert run_history(real_redis, key_prefix) == ["gate-refused"]
