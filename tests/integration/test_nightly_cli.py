"""End to end: ``recsys nightly-batch`` / ``status`` / ``rollback`` through Typer (issue #5).

The real two-stage model and the real quality gate run on 300 synthetic users
(:func:`tests.small.small_env`), scored in three shards of 100 users.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.config import RedisConfig, Settings
from recsys_batch.data import columns as C
from recsys_batch.publish import embedded, keys, status, writer
from recsys_batch.run import pipeline
from recsys_batch.run.lock import run_lock
from tests.nightly import stored_values
from tests.small import small_env

pytestmark = pytest.mark.integration
runner = CliRunner()

USERS = 300
SHARD_USERS = 100
UNREACHABLE_FLOOR = "0.99"  # gate.min_precision_at_5 no model reaches on this data


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def env(tmp_path: Path, redis_url: str, key_prefix: str) -> dict[str, str]:
    return {
        **small_env(USERS, SHARD_USERS),
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": key_prefix,
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
    }


def invoke(args: list[str], env: dict[str, str]) -> Any:
    return runner.invoke(app, args, env=env)


def nightly(env: dict[str, str], *options: str) -> dict[str, Any]:
    """Run ``nightly-batch --source synthetic``; return its JSON summary (stdout)."""
    result = invoke(
        ["nightly-batch", "--source", "synthetic", "--log-format", "json", *options], env
    )
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    summary["log"] = [json.loads(line) for line in result.stderr.splitlines() if line]
    return summary


def current(redis_url: str, prefix: str) -> str | None:
    client = redis.Redis.from_url(redis_url)
    try:
        value = client.get(keys.current_key(prefix))
        return value.decode() if value else None
    finally:
        client.close()


def shard_files(run_dir: str) -> list[str]:
    """The files of the run's ``recommendations.parquet`` folder."""
    folder = Path(run_dir) / "recommendations.parquet"
    assert folder.is_dir()
    return sorted(path.name for path in folder.iterdir())


class TestNightlyCli:
    def test_publish_status_rerun_rollback(
        self, env: dict[str, str], redis_url: str, key_prefix: str
    ) -> None:
        first = nightly(env)
        v1 = current(redis_url, key_prefix)
        assert v1 is not None and first["version"] == v1
        status = invoke(["status", "--json"], env)
        assert status.exit_code == 0, status.output
        info = json.loads(status.output)
        assert info["live"]["version"] == v1
        assert info["live"]["users"] == USERS
        # The version records the metric the real gate measured on this run.
        assert info["live"]["metrics"]["precision@5"] == first["metrics"]["precision@5"] > 0
        second = nightly(env)
        stages = [(line["stage"], line["rows"]) for line in second["log"] if "stage" in line]
        assert [name for name, _ in stages] == [name for name, _ in pipeline.STAGES]
        assert dict(stages)["score_and_publish"] == USERS
        v2 = current(redis_url, key_prefix)
        assert v2 == second["version"] != v1
        human = invoke(["status"], env)
        assert f"live:     {v2}" in human.output and f"previous: {v1}" in human.output
        back = invoke(["rollback"], env)
        assert back.exit_code == 0, back.output
        assert current(redis_url, key_prefix) == v1

    def test_redis_holds_what_the_shards_wrote_to_disk(
        self, env: dict[str, str], real_redis: redis.Redis, key_prefix: str
    ) -> None:
        summary = nightly(env)
        run_dir, version = summary["run_dir"], summary["version"]
        assert shard_files(run_dir) == [f"shard={n:05d}.parquet" for n in range(3)]
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
        assert manifest["version"] == version
        assert [s["name"] for s in manifest["stages"]] == [name for name, _ in pipeline.STAGES]
        recs = pl.read_parquet(Path(run_dir) / "recommendations.parquet")
        assert recs[C.USER].n_unique() == USERS
        assert recs.group_by(C.USER).len()["len"].unique().to_list() == [Settings().publish.top_n]
        lists = recs.sort(C.USER, C.RANK).group_by(C.USER, maintain_order=True).agg(C.ITEM)
        assert stored_values(real_redis, version, key_prefix) == dict(lists.iter_rows())

    def test_gate_refusal_exit_3_nothing_flipped(
        self, env: dict[str, str], redis_url: str, key_prefix: str
    ) -> None:
        nightly(env)
        live = current(redis_url, key_prefix)
        strict = {**env, "RECSYS_GATE__MIN_PRECISION_AT_5": UNREACHABLE_FLOOR}
        refused = invoke(["nightly-batch", "--source", "synthetic"], strict)
        assert refused.exit_code == 3, refused.output
        assert "quality gate refused" in refused.output
        assert current(redis_url, key_prefix) == live
        # --no-gate publishes anyway.
        published = nightly(strict, "--no-gate")
        assert current(redis_url, key_prefix) == published["version"] != live

    def test_dry_run_publishes_nothing(
        self, env: dict[str, str], redis_url: str, key_prefix: str, real_redis: redis.Redis
    ) -> None:
        summary = nightly(env, "--dry-run")
        assert (summary["status"], summary["version"], summary["users"]) == ("dry-run", None, USERS)
        assert current(redis_url, key_prefix) is None
        # Only the run history (#19): a dry run publishes nothing.
        assert list(real_redis.scan_iter(match=f"{key_prefix}:*")) == [
            keys.runs_key(key_prefix).encode()
        ]
        assert shard_files(summary["run_dir"]) == [f"shard={n:05d}.parquet" for n in range(3)]
        recs = pl.read_parquet(Path(summary["run_dir"]) / "recommendations.parquet")
        assert recs[C.USER].n_unique() == USERS

    def test_a_tail_field_lost_after_writing_never_goes_live(
        self,
        env: dict[str, str],
        redis_url: str,
        key_prefix: str,
        real_redis: redis.Redis,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Issue #29: one ``t`` field (items 17-20 of a user) vanishes after its shard wrote
        and counted it (an eviction, say). Verification before the flip must see it: exit 4,
        the old version stays live. Mutation caught: verifying the ``u`` family only."""
        nightly(env)
        live = current(redis_url, key_prefix)
        original = writer.write_users
        lost: list[str] = []

        def write_then_lose_a_tail(
            client: Any, version: str, recs: Any, *args: Any, **kw: Any
        ) -> Any:
            written = original(client, version, recs, *args, **kw)
            if not lost:
                user = recs[C.USER][0]
                bucket = keys.bucket_of(user, written.buckets)
                tail = keys.user_bucket_key(version, bucket, key_prefix, "t")
                assert real_redis.hdel(tail, str(user)) == 1
                lost.append(version)
            return written

        monkeypatch.setattr(writer, "write_users", write_then_lose_a_tail)
        result = invoke(["nightly-batch", "--source", "synthetic"], env)
        assert result.exit_code == 4, result.output
        assert "verification failed" in result.output and "'t'" in result.output
        assert current(redis_url, key_prefix) == live != lost[0]
        assert lost[0] not in status.all_versions(real_redis, RedisConfig(key_prefix=key_prefix))

    def test_locked_exit_5(self, env: dict[str, str]) -> None:
        with run_lock(Path(env["RECSYS_RUN__LOCK_FILE"])):
            result = invoke(["nightly-batch", "--source", "synthetic"], env)
        assert result.exit_code == 5, result.output
        assert "another nightly batch is running" in result.output

    def test_redis_unavailable_exit_4_password_masked(self, env: dict[str, str]) -> None:
        env = {**env, "REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"}
        result = invoke(["nightly-batch", "--source", "synthetic"], env)
        assert result.exit_code == 4, result.output
        assert "hunter2" not in result.output
        assert "cannot reach Redis" in result.output

    def test_bad_config_exit_2(self, env: dict[str, str], tmp_path: Path) -> None:
        bad = tmp_path / "bad.toml"
        bad.write_text("[redis]\nchunk_sise = 5\n")
        result = invoke(["nightly-batch", "--config", str(bad)], env)
        assert result.exit_code == 2, result.output

    def test_run_date_is_validated(self, env: dict[str, str]) -> None:
        result = invoke(["nightly-batch", "--run-date", "yesterday"], env)
        assert result.exit_code == 2


def test_embedded_redis_outlives_the_batch(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No REDIS_URL: the batch starts the embedded server; status in a later command sees it."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("RECSYS_REDIS__URL", raising=False)
    directory = tmp_path / "emb"
    env = {k: v for k, v in env.items() if k != "REDIS_URL"}
    env["RECSYS_REDIS__EMBEDDED_DIR"] = str(directory)
    try:
        first = invoke(["nightly-batch", "--source", "synthetic"], env)
        assert first.exit_code == 0, first.output
        status = invoke(["status", "--json"], env)
        info = json.loads(status.output)
        assert info["live"]["users"] == USERS
        assert info["redis"].startswith("embedded")
        assert (directory / "appendonly.aof").exists()
    finally:
        embedded.stop_embedded(directory)


@pytest.mark.slow
def test_bundled_data_real_two_stage(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    """The real pipeline (two_stage + backtest gate off) on the bundled data."""
    env = {
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": key_prefix,
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
        # Smaller model: this test checks the wiring, not the quality.
        "RECSYS_CANDIDATES__N_ALS": "30",
        "RECSYS_CANDIDATES__N_OWN": "20",
        "RECSYS_CANDIDATES__N_COPURCHASE": "10",
        "RECSYS_CANDIDATES__MAX_PER_USER": "60",
        "RECSYS_CANDIDATES__ALS__ITERATIONS": "3",
        "RECSYS_RANKER__N_ESTIMATORS": "30",
    }
    result = invoke(["nightly-batch", "--no-gate"], env)
    assert result.exit_code == 0, result.output
    version = current(redis_url, key_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        users = int(client.hget(f"{key_prefix}:v:{version}:meta", "users"))
        assert users > 2_000
        first_user = status.version_user_ids(client, version, RedisConfig(key_prefix=key_prefix))[0]
        items = stored_values(client, version, key_prefix, [first_user])[first_user]
        top_n = Settings().publish.top_n
        assert len(items) == top_n and 999999 not in items and len(set(items)) == top_n
    finally:
        client.close()
