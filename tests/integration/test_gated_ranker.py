"""The nightly batch publishes the ranker its quality gate measured (``gate.publish_gated_ranker``).

The gate's backtest trains a ranker on the 6 weeks before its test window and measures it;
by default the batch scores with that very ranker (stage 1 refit on everything) instead of
fitting a second one, so what ships is what was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from recsys_batch.config import Settings, load_settings
from recsys_batch.data.sources import load_dataset
from recsys_batch.model import split
from recsys_batch.model.persist import load_model
from recsys_batch.publish import status, store
from recsys_batch.run import pipeline, quality_gate

pytestmark = pytest.mark.integration


def _settings(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    scale: dict[str, Any] | None = None,
    **gate: Any,
) -> Settings:
    return load_settings(
        data={"source": "synthetic", "synthetic_users": 160, "synthetic_seed": 3},
        prefilter={"min_user_share": 0.01},
        candidates={"als": {"iterations": 3, "factors": 16, "threads": 1}},
        ranker={"n_estimators": 30, "early_stopping_rounds": 10, "threads": 1},
        # A floor every model passes: these tests are about which ranker ships.
        gate={"min_precision_at_5": 0.0, "max_relative_drop": 1.0, **gate},
        run={"runs_dir": str(tmp_path / "runs"), "lock_file": str(tmp_path / "lock")},
        redis={"url": redis_url, "key_prefix": key_prefix},
        scale=scale or {},
    )


def _run(settings: Settings, *, gate: bool = True) -> pipeline.RunResult:
    return pipeline.run_nightly(settings, gate=gate)


def _booster_texts(model: Any) -> list[str]:
    return [booster.model_to_string(num_iteration=best) for booster, best in model.ranker.members]


def test_the_published_ranker_is_the_one_the_gate_measured(
    tmp_path: Path, real_redis: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    settings = _settings(tmp_path, redis_url, key_prefix)
    result = _run(settings)
    assert result.status == "published" and result.users == 160
    assert result.metrics["ranker_source"] == "gate"

    shipped = load_model(result.run_dir / "models")
    dataset = load_dataset(settings.data)
    first, last = split.week_range(dataset.transactions)
    # Scored as of the newest data, with a ranker trained on the backtest's windows.
    assert shipped.windows == split.production_windows(first, last, settings.split)
    backtest_windows = split.backtest_windows(first, last, settings.split)
    assert shipped.ranker_windows is not None
    assert (shipped.ranker_windows.history_end, shipped.ranker_windows.target_end) == (
        backtest_windows.history_end,
        backtest_windows.target_end,
    )
    assert "ranker_fit" not in shipped.timings
    # The very model the gate's backtest trains (deterministic for fixed seeds and threads),
    # with the run's decision on the forward plan features (#26: off for a plain night).
    outcome = quality_gate.backtest_outcome(
        dataset, settings, forward_plans=shipped.forward_plan_features
    )
    assert outcome.metrics["precision@5"] == pytest.approx(result.metrics["precision@5"])
    assert _booster_texts(shipped) == _booster_texts(outcome.model)
    # The gate measures the main list and fits no new-items ranker; the one that ships is
    # trained in the train stage, on the newest weeks. Mutation caught: the gate's carried
    # over (4 weeks staler than the backtest's), or the gate still fitting one.
    assert outcome.model.new_items_ranker is None
    assert shipped.new_items_ranker is not None
    assert "new_items_ranker" in shipped.timings


def test_without_publish_gated_ranker_a_second_ranker_is_trained(
    tmp_path: Path, real_redis: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    result = _run(_settings(tmp_path, redis_url, key_prefix, publish_gated_ranker=False))
    assert result.metrics["ranker_source"] == "trained"
    shipped = load_model(result.run_dir / "models")
    assert shipped.ranker_windows is None
    assert "ranker_fit" in shipped.timings


def test_without_the_gate_the_ranker_is_trained_on_the_newest_weeks(
    tmp_path: Path, real_redis: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    result = _run(_settings(tmp_path, redis_url, key_prefix), gate=False)
    assert result.metrics["ranker_source"] == "trained"
    assert load_model(result.run_dir / "models").ranker_windows is None


def test_out_of_core_with_a_sampled_gate_still_serves_every_user(
    tmp_path: Path, real_redis: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    # Shards on disk and a ~60-user gate sample: the gate's ranker ships, stage 1 is refit
    # on everyone, so all 160 users get recommendations.
    scale = {"in_memory_rows": 20_000, "shard_users": 50, "train_users": 60}
    result = _run(_settings(tmp_path, redis_url, key_prefix, scale=scale))
    assert result.metrics["ranker_source"] == "gate"
    assert result.status == "published" and result.users == 160
    client = store.connect(_settings(tmp_path, redis_url, key_prefix).redis)
    try:
        version = client.get(f"{key_prefix}:current").decode()
        cfg = _settings(tmp_path, redis_url, key_prefix).redis
        assert len(status.version_user_ids(client, version, cfg)) == 160
    finally:
        client.close()
