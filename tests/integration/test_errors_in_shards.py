"""A bug in a shard is a bug, a Redis failure is a failed publish (issue #29).

``recsys nightly-batch`` on the small synthetic night (``faults_helpers.batch_env``: the real
two-stage model, 300 users in three shards) with one step of the shard replaced: a
``TypeError`` must end the run at once with exit 1 (its traceback with ``--debug``), in a
dry run too, and never as exit 4 "Redis unavailable"; a raw ``redis.ConnectionError`` is
still retried ``scale.shard_retries`` times and ends as exit 4. Either way the live version
stays whole, byte for byte, and the half-written one is removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.publish import status, writer
from recsys_batch.run import shard_task
from tests.integration.faults_helpers import (
    assert_live_is_whole,
    batch_env,
    flat,
    nightly,
    snapshot,
)

pytestmark = pytest.mark.integration

SHARD_RETRIES = 2


@pytest.fixture
def published(
    tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
) -> tuple[dict[str, str], str, dict[bytes, Any]]:
    """The night's environment, after one good night: its live version and every value."""
    env = batch_env(tmp_path, redis_url, key_prefix, RECSYS_SCALE__SHARD_RETRIES=str(SHARD_RETRIES))
    first = nightly(env, "--no-gate")
    assert first.exit_code == 0, first.output
    live = assert_live_is_whole(real_redis, key_prefix)
    return env, live, snapshot(real_redis, key_prefix, live)


def assert_nothing_changed(
    client: redis.Redis, prefix: str, live: str, whole: dict[bytes, Any]
) -> None:
    """The live version is the one before, byte for byte, and the only one registered."""
    assert assert_live_is_whole(client, prefix) == live
    assert snapshot(client, prefix, live) == whole
    assert status.all_versions(client, RedisConfig(key_prefix=prefix)) == [live]


@pytest.mark.parametrize(
    "options",
    [[], ["--dry-run"], ["--debug"], ["--dry-run", "--debug"]],
    ids=["publish", "dry-run", "publish-debug", "dry-run-debug"],
)
def test_a_bug_in_a_shard_exits_1_at_once(
    options: list[str],
    published: tuple[dict[str, str], str, dict[bytes, Any]],
    key_prefix: str,
    real_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (#29): ``LocalExecutor`` retried any exception and reported it as a
    ``ShardError``, so a ``TypeError`` ended as exit 4 "Redis unavailable", even in a dry
    run. Now: one attempt, exit 1 naming the ``TypeError``, the traceback only with
    ``--debug`` (catches a retry predicate that accepts any ``Exception``)."""
    env, live, whole = published
    calls: list[int] = []

    def buggy_check(recs: pl.DataFrame, ctx: shard_task.ShardContext) -> None:
        calls.append(1)
        msg = "unsupported operand type(s) for +: 'int' and 'str'"
        raise TypeError(msg)

    monkeypatch.setattr(shard_task, "check_recommendations", buggy_check)
    result = nightly(env, "--no-gate", *options)
    output = flat(result.output)
    assert result.exit_code == 1, result.output
    assert "unexpected error: TypeError: unsupported operand" in output
    assert "ShardError" not in output and "retrying" not in output
    assert calls == [1]  # the first shard, once: neither retried nor the next shard run
    if "--debug" in options:
        assert "Traceback (most recent call last)" in result.output
        assert "in buggy_check" in result.output  # the frame that raised
    else:
        assert "Traceback" not in result.output
    assert_nothing_changed(real_redis, key_prefix, live, whole)


def test_a_redis_connection_error_in_a_shard_is_retried_then_exit_4(
    published: tuple[dict[str, str], str, dict[bytes, Any]],
    key_prefix: str,
    real_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A raw ``redis.ConnectionError`` from the shard's write is a failed publish: the shard
    runs ``1 + scale.shard_retries`` times, then exit 4, the live version untouched (catches
    a predicate that stops retrying Redis errors, or reports them as a bug)."""
    env, live, whole = published
    calls: list[str] = []

    def connection_reset(client: Any, version: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(version)
        msg = "Connection reset by peer"
        raise redis.ConnectionError(msg)

    monkeypatch.setattr(writer, "write_users", connection_reset)
    result = nightly(env, "--no-gate")
    output = flat(result.output)
    assert result.exit_code == 4, result.output
    assert f"failed after {SHARD_RETRIES + 1} attempt(s): ConnectionError" in output
    assert "live version keeps serving" in output
    assert "Traceback" not in result.output
    assert len(calls) == SHARD_RETRIES + 1 and len(set(calls)) == 1  # one shard, one version
    assert calls[0] != live
    assert_nothing_changed(real_redis, key_prefix, live, whole)
