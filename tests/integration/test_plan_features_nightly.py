"""The shipped ``recsys nightly-batch`` and the forward plan features (issue #26).

Synthetic data (300 users, weeks 1..53) whose calendar covers exactly the data's weeks. A
plain night serves weeks 54-57, which the calendar does not cover: its gate and its model
read no forward feature, and the manifest, the model, the log, ``recsys status`` and the
console say so. A night with ``--run-date`` inside the data serves weeks the calendar
covers, and reads them.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api.main import create_app
from cli.main import app
from recsys_batch.config import Settings
from recsys_batch.model.plan_features import FORWARD_FEATURES
from recsys_batch.run import records
from tests.small import small_env

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration
runner = CliRunner()

RUN_DATE_INSIDE = "2017-10-27"  # day 300 of the synthetic data (week 43 of 53)


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
        **small_env(300, 100),
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": key_prefix,
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
    }


def night(env: dict[str, str], *options: str) -> dict[str, Any]:
    """The real night on synthetic data: its manifest, model meta, log lines and status."""
    result = runner.invoke(
        app, ["nightly-batch", "--source", "synthetic", "--log-format", "json", *options], env=env
    )
    assert result.exit_code == 0, result.output
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    status = runner.invoke(app, ["status"], env=env)
    assert status.exit_code == 0, status.output
    return {
        "manifest": json.loads((run_dir / "manifest.json").read_text()),
        "model": json.loads((run_dir / records.MODELS / "two_stage.json").read_text()),
        "log": [json.loads(line)["message"] for line in result.stderr.splitlines() if line],
        "status": status.output,
    }


def console_flag(redis_url: str, key_prefix: str) -> Any:
    settings = Settings(
        redis={"url": redis_url, "key_prefix": key_prefix}, api={"current_cache_seconds": 0.0}
    )
    with TestClient(create_app(settings)) as client:
        return client.get("/v1/versions/live").json()["forward_plan_features"]


def test_plain_night_serves_uncovered_weeks_without_forward_features(
    env: dict[str, str], redis_url: str, key_prefix: str
) -> None:
    """Mutation caught: forward features decided from the gate's (covered) test window
    instead of the weeks the night serves."""
    run = night(env)
    assert run["manifest"]["data"]["forward_plan_features"] is False
    reason = "the promotion calendar does not cover weeks 54-57"
    assert run["manifest"]["data"]["plan_features"] == reason
    assert run["model"]["forward_plan_features"] is False
    assert not set(FORWARD_FEATURES) & set(run["model"]["feature_names"])
    assert f"forward plan features off: {reason}" in run["log"]
    assert f"forward plan features off ({reason})" in run["status"]
    assert console_flag(redis_url, key_prefix) is False


def test_run_date_inside_the_data_uses_them(
    env: dict[str, str], redis_url: str, key_prefix: str
) -> None:
    run = night(env, "--run-date", RUN_DATE_INSIDE)
    assert run["manifest"]["data"]["forward_plan_features"] is True
    assert run["model"]["forward_plan_features"] is True
    assert set(FORWARD_FEATURES) <= set(run["model"]["feature_names"])
    assert any(line.startswith("forward plan features on:") for line in run["log"])
    assert "forward plan features on (" in run["status"]
    assert console_flag(redis_url, key_prefix) is True
