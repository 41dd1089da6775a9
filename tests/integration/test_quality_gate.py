"""The quality gate against real models on small synthetic data (#16).

A truly weak model (real settings: candidates from the popular list only, a one-tree
ranker) is refused by the shipped command; a model far below the live version is refused;
a night after a ``--no-gate`` night says loudly that it has nothing to compare with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.errors import QualityGateError
from recsys_batch.publish import keys, status
from recsys_batch.run import pipeline, records
from tests.nightly import small_run_settings
from tests.small import small_env

pytestmark = pytest.mark.integration

# Real configuration of a weak model: no personal generator, 10 popular candidates, 1 tree.
WEAK_CANDIDATES: dict[str, Any] = {
    "n_als": 0,
    "n_own": 0,
    "n_copurchase": 0,
    "n_trend": 0,
    "n_popular": 10,
}
WEAK_ENV = {f"RECSYS_CANDIDATES__{k.upper()}": str(v) for k, v in WEAK_CANDIDATES.items()}
WEAK_RANKER = {"n_estimators": 1}


def prefix_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    """Every key under ``prefix`` but the run history ``P:runs``, which every run writes."""
    runs = keys.runs_key(prefix).encode()
    return [k for k in client.scan_iter(match=f"{prefix}:*", count=10_000) if k != runs]


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_restore_logging")
def test_cli_refuses_a_truly_weak_model(
    tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    env = {
        **small_env(),
        **WEAK_ENV,
        "RECSYS_RANKER__N_ESTIMATORS": "1",
        "REDIS_URL": redis_url,
        "RECSYS_REDIS__KEY_PREFIX": key_prefix,
        "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
        "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
    }
    result = CliRunner().invoke(app, ["nightly-batch", "--source", "synthetic"], env=env)
    assert result.exit_code == 3, result.output
    assert "below the floor" in result.output
    assert prefix_keys(real_redis, key_prefix) == []
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert records.read_manifest(run_dir)["status"] == "gate-refused"


def test_weak_model_far_below_the_live_version_is_refused(
    tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> None:
    strong = small_run_settings(tmp_path, redis_url, key_prefix)
    live = pipeline.run_nightly(strong)
    # Floor lowered so that only the comparison with the live version can refuse it.
    weak = small_run_settings(
        tmp_path,
        redis_url,
        key_prefix,
        candidates=WEAK_CANDIDATES,
        ranker=WEAK_RANKER,
        gate={"min_precision_at_5": 0.01},
    )
    keys_before = sorted(prefix_keys(real_redis, key_prefix))
    with pytest.raises(QualityGateError, match="more than 10% below the live version") as info:
        pipeline.run_nightly(weak)
    assert info.value.exit_code == 3
    assert status.live_version(real_redis, strong.redis) == live.version
    assert sorted(prefix_keys(real_redis, key_prefix)) == keys_before


def test_night_after_a_no_gate_night_says_it_has_nothing_to_compare_with(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    real_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = small_run_settings(tmp_path, redis_url, key_prefix)
    ungated = pipeline.run_nightly(settings, gate=False)
    info = status.version_info(real_redis, ungated.version or "", settings.redis)
    assert "precision@5" not in info.metrics
    with caplog.at_level(logging.WARNING, logger="recsys_batch.run.quality_gate"):
        gated = pipeline.run_nightly(settings)
    decision = records.read_manifest(gated.run_dir)["metrics"]["gate"]
    assert decision["live"] is None
    assert decision["relative_check"] == "skipped: the live version has no measured precision@5"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "nothing to compare with" in r.getMessage() and ungated.version in r.getMessage()
        for r in warnings
    )
    # The gated night recorded its precision: the night after it has a reference again.
    caplog.clear()
    again = pipeline.run_nightly(settings)
    decision = records.read_manifest(again.run_dir)["metrics"]["gate"]
    assert decision["relative_check"] == "passed"
    assert decision["live"] == pytest.approx(gated.metrics["precision@5"])
