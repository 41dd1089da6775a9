"""Redis memory stays bounded across nightly publishes (issue #7).

After ten consecutive publishes of the same data, Redis holds two versions (the live one and
the previous one, for ``recsys rollback``), not ten: the cleanup after each flip unlinks the
rest, and every key of a version carries the safety TTL, so even a version nobody cleans up
expires by itself. Measured with ``INFO memory`` on a redis-server of this test only, so other
tests' keys do not blur the figure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.publish import keys, versions
from tests.conftest import start_redis_server

pytestmark = pytest.mark.integration

USERS = 20_000
PUBLISHES = 10


def recommendations(users: int) -> pl.DataFrame:
    ids = np.arange(1, users + 1, dtype=np.int64)
    return pl.DataFrame(
        {
            "user_id": np.repeat(ids, 5),
            "item_id": np.tile(np.arange(840_361, 840_366, dtype=np.int64), users),
            "rank": np.tile(np.arange(1, 6, dtype=np.int32), users),
            "score": np.ones(users * 5, dtype=np.float32),
        }
    )


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    proc, port = start_redis_server(tmp_path)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        yield client
    finally:
        client.close()
        proc.kill()
        proc.wait(timeout=10)


def used_memory(client: redis.Redis) -> int:
    """``used_memory`` once the background UNLINK thread has freed everything."""
    deadline = time.monotonic() + 10
    while client.info("memory")["lazyfree_pending_objects"] and time.monotonic() < deadline:
        time.sleep(0.02)
    return int(client.info("memory")["used_memory"])


def test_ten_publishes_keep_about_two_versions(own_redis: redis.Redis) -> None:
    url = "redis://{host}:{port}/0".format(**own_redis.connection_pool.connection_kwargs)
    cfg = RedisConfig(url=url, key_prefix="mem", chunk_size=5_000)
    recs = recommendations(USERS)
    baseline = used_memory(own_redis)
    sizes = []
    published = []
    for _ in range(PUBLISHES):
        published.append(versions.publish_version(own_redis, recs, [1, 2, 3], None, {}, cfg))
        sizes.append(used_memory(own_redis) - baseline)
    one = sizes[0]
    print(f"\nused_memory above baseline after each publish (bytes): {sizes}")  # -s shows it
    assert one > USERS * 50  # a version really takes room (a key + a value per user)
    # From the second publish on: two versions, whatever the number of publishes.
    for n, size in enumerate(sizes[1:], start=2):
        assert 1.6 * one < size < 2.4 * one, f"after publish {n}: {size} bytes, one = {one}"
    assert sizes[-1] < 1.15 * sizes[1]  # no slow growth either
    per_version = USERS + 2  # users, popular list, meta hash
    assert own_redis.dbsize() == 2 * per_version + 3  # + current, previous, versions
    assert versions.all_versions(own_redis, cfg) == published[-2:]
    # Every key of a version expires by itself (safety TTL), the pointers do not.
    ttl = cfg.ttl_days * 86_400
    for name in own_redis.scan_iter(match="mem:v:*", count=10_000):
        assert 0 < own_redis.ttl(name) <= ttl
    assert own_redis.ttl(keys.current_key("mem")) == -1
