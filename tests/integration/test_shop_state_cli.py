"""Shop state through the real ``recsys`` commands on a real Redis (#27).

Each state (a scenario, unavailable items for all stores and for one store, a promotion) is
stored by its command and read back by the command that shows it, the way an operator would;
then two publishes and a rollback (cleanup included) must leave all of it in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis
from typer.testing import CliRunner

from cli.main import app as cli
from recsys_batch.config import RedisConfig
from recsys_batch.data import columns as C
from recsys_batch.publish import versions
from tests.publishing import publish_lists

pytestmark = pytest.mark.integration


def recsys(redis_url: str, key_prefix: str, *args: str) -> Any:
    env = {"REDIS_URL": redis_url, "RECSYS_REDIS__KEY_PREFIX": key_prefix}
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def shown(redis_url: str, key_prefix: str, *args: str) -> Any:
    return json.loads(recsys(redis_url, key_prefix, *args).stdout)


def test_each_state_is_stored_read_back_and_outlives_versions(
    real_redis: redis.Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    def run(*args: str) -> Any:
        return recsys(redis_url, key_prefix, *args)

    def show(*args: str) -> Any:
        return shown(redis_url, key_prefix, *args)

    (tmp_path / "weekend.toml").write_text(
        'min_new = 2\nmax_per_category = 1\nbrands = ["Private"]\n'
    )
    (tmp_path / "gone.csv").write_text("item_id,reason\n101,recall\n102,recall\n")
    (tmp_path / "store.txt").write_text("201\n")
    (tmp_path / "promo.txt").write_text("301\n302\n")

    run("scenario", "set", "weekend", "--file", str(tmp_path / "weekend.toml"))
    run("catalog", "unavailable", str(tmp_path / "gone.csv"), "--ttl-hours", "48")
    run("catalog", "unavailable", str(tmp_path / "store.txt"), "--store", "7")
    run("promo", "set", str(tmp_path / "promo.txt"), "--until", "2099-12-31")
    expected = {
        "scenario": {"min_new": 2, "max_per_category": 1, "brands": ["Private"]},
        "scenarios": ["weekend"],
        "unavailable": ["101", "102"],
        "store 7": {"201": None},
        "promo": {"items": [301, 302], "until": "2099-12-31"},
    }

    def state() -> dict[str, Any]:
        return {
            "scenario": show("scenario", "show", "weekend"),
            "scenarios": list(show("scenario", "list")),
            "unavailable": sorted(show("catalog", "list")),
            "store 7": show("catalog", "list", "--store", "7"),
            "promo": show("promo", "show"),
        }

    assert state() == expected

    cfg = RedisConfig(url=redis_url, key_prefix=key_prefix)
    recs = pl.DataFrame([(1, 9, 1, 1.0)], schema=C.RECOMMENDATIONS, orient="row")
    for _ in range(3):  # the third publish cleans up the first version
        publish_lists(real_redis, recs, [9], None, cfg)
    versions.rollback(real_redis, cfg)
    assert state() == expected

    run("scenario", "delete", "weekend")
    run("catalog", "available", str(tmp_path / "gone.csv"))
    run("catalog", "available", str(tmp_path / "store.txt"), "--store", "7")
    run("promo", "clear")
    assert show("scenario", "list") == {}
    assert (show("catalog", "list"), show("catalog", "list", "--store", "7")) == ({}, {})
    assert show("promo", "show") is None
