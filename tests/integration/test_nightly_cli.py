"""End to end: ``recsys nightly-batch`` / ``status`` / ``rollback`` through Typer (issue #5)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.config import Settings
from recsys_batch.data.sources import Dataset
from recsys_batch.publish import embedded
from recsys_batch.run import pipeline
from recsys_batch.run.lock import run_lock
from tests.unit.test_pipeline import FakeTrainer

pytestmark = pytest.mark.integration
runner = CliRunner()


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
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": key_prefix,
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
        "RECSYS_DATA__SYNTHETIC_USERS": "300",
        "RECSYS_PREFILTER__MIN_DEPARTMENT_ITEMS": "1",
        "RECSYS_PREFILTER__MIN_USER_SHARE": "0",
    }


@pytest.fixture
def gate_value(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Fake trainer and a controllable gate metric (the real ones are tested elsewhere)."""
    value = {"precision@5": 0.3}

    def evaluate(dataset: Dataset, settings: Settings) -> dict[str, Any]:
        return dict(value)

    monkeypatch.setattr(pipeline, "default_trainer", FakeTrainer)
    monkeypatch.setattr(pipeline, "backtest_metrics", evaluate)
    return value


def invoke(args: list[str], env: dict[str, str]) -> Any:
    return runner.invoke(app, args, env=env)


def current(redis_url: str, prefix: str) -> str | None:
    client = redis.Redis.from_url(redis_url)
    try:
        value = client.get(f"{prefix}:current")
        return value.decode() if value else None
    finally:
        client.close()


@pytest.mark.usefixtures("gate_value")
class TestNightlyCli:
    def test_publish_status_rerun_rollback(
        self, env: dict[str, str], redis_url: str, key_prefix: str
    ) -> None:
        first = invoke(["nightly-batch", "--source", "synthetic"], env)
        assert first.exit_code == 0, first.output
        v1 = current(redis_url, key_prefix)
        assert v1 and v1 in first.output
        status = invoke(["status", "--json"], env)
        assert status.exit_code == 0, status.output
        info = json.loads(status.output)
        assert info["live"]["version"] == v1
        assert info["live"]["users"] == 300
        assert info["live"]["metrics"]["precision@5"] == 0.3
        second = invoke(["nightly-batch", "--source", "synthetic", "--log-format", "json"], env)
        assert second.exit_code == 0, second.output
        log_lines = [json.loads(line) for line in second.stderr.splitlines() if line]
        stages = {line["stage"]: line["rows"] for line in log_lines if "stage" in line}
        assert stages["recommend"] == 300 * 5
        assert set(stages) >= {"load", "gate", "prefilter", "train", "recommend", "publish"}
        v2 = current(redis_url, key_prefix)
        assert v2 != v1
        human = invoke(["status"], env)
        assert f"live:     {v2}" in human.output and f"previous: {v1}" in human.output
        back = invoke(["rollback"], env)
        assert back.exit_code == 0, back.output
        assert current(redis_url, key_prefix) == v1

    def test_gate_refusal_exit_3_nothing_flipped(
        self, env: dict[str, str], redis_url: str, key_prefix: str, gate_value: dict[str, float]
    ) -> None:
        assert invoke(["nightly-batch", "--source", "synthetic"], env).exit_code == 0
        live = current(redis_url, key_prefix)
        gate_value["precision@5"] = 0.01
        refused = invoke(["nightly-batch", "--source", "synthetic"], env)
        assert refused.exit_code == 3, refused.output
        assert "quality gate refused" in refused.output
        assert current(redis_url, key_prefix) == live
        # --no-gate publishes anyway.
        assert invoke(["nightly-batch", "--source", "synthetic", "--no-gate"], env).exit_code == 0
        assert current(redis_url, key_prefix) != live

    def test_dry_run_publishes_nothing(
        self, env: dict[str, str], redis_url: str, key_prefix: str
    ) -> None:
        result = invoke(["nightly-batch", "--source", "synthetic", "--dry-run"], env)
        assert result.exit_code == 0, result.output
        assert "dry-run" in result.output
        assert current(redis_url, key_prefix) is None

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


@pytest.mark.usefixtures("gate_value")
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
        assert info["live"]["users"] == 300
        assert info["redis"].startswith("embedded")
        assert (directory / "appendonly.aof").exists()
    finally:
        embedded.stop_embedded(directory)


@pytest.mark.slow
def test_bundled_data_real_two_stage(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    """The real pipeline (two_stage + backtest gate off) on the bundled data."""
    try:
        pipeline.default_trainer()
    except ImportError as exc:
        pytest.skip(f"two_stage not importable yet: {exc}")
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
        first_user = next(client.scan_iter(f"{key_prefix}:v:{version}:u:*"))
        items = client.get(first_user).decode().split(",")
        assert len(items) == 5 and "999999" not in items and len(set(items)) == 5
    finally:
        client.close()
