"""Redis memory stays bounded across nightly runs (issue #7).

After several consecutive ``nightly-batch`` runs of the real model on the same small data,
Redis holds two versions (the live one and the previous one, for ``recsys rollback``), not
one per run: the cleanup after each flip unlinks the rest, and every key of a version
carries the safety TTL, so even a version nobody cleans up expires by itself.

The bytes are the sum of ``MEMORY USAGE`` over every key of a redis-server of this test
only: with a few hundred users a version is ~100 kB, less than the client buffers that make
``used_memory`` move between runs, while the keys' own bytes are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recsys_batch.publish import keys, status
from recsys_batch.run import pipeline
from tests.conftest import start_redis_server
from tests.nightly import small_run_settings

pytestmark = pytest.mark.integration

USERS = 300
RUNS = 4
PREFIX = "mem"


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


def stored_bytes(client: redis.Redis) -> int:
    """Bytes of every key and value in the server (``MEMORY USAGE``, every element)."""
    return sum(
        int(client.memory_usage(name, samples=0) or 0) for name in client.scan_iter(count=10_000)
    )


def test_nightly_runs_keep_two_versions(own_redis: redis.Redis, tmp_path: Path) -> None:
    url = "redis://{host}:{port}/0".format(**own_redis.connection_pool.connection_kwargs)
    settings = small_run_settings(tmp_path, url, PREFIX, users=USERS)
    sizes, published = [], []
    for _ in range(RUNS):
        result = pipeline.run_nightly(settings, gate=False)
        assert result.users == USERS
        published.append(result.version)
        sizes.append(stored_bytes(own_redis))
    one = sizes[0]
    print(f"\nbytes of all keys after each run: {sizes}")  # -s shows it
    assert one > USERS * 50  # a version really takes room (a packed field per user)
    for n, size in enumerate(sizes[1:], start=2):  # from the second run on: two versions
        assert 1.8 * one < size < 2.2 * one, f"after run {n}: {size} bytes, one = {one}"
    assert sizes[-1] <= 1.05 * sizes[1]  # no slow growth either

    cfg = settings.redis
    assert status.all_versions(own_redis, cfg) == published[-2:]
    assert (status.live_version(own_redis, cfg), status.previous_version(own_redis, cfg)) == (
        published[-1],
        published[-2],
    )
    # Bucket hashes of users (u: head items, t: items past 16, r: reasons, n and w: new items
    # and their reasons), popular list, item attributes, meta hash (format 2, #18, #26).
    per_version = [
        len(list(own_redis.scan_iter(match=keys.version_prefix(v, PREFIX) + "*", count=10_000)))
        for v in published[-2:]
    ]
    buckets = int(own_redis.hget(keys.meta_key(published[-1], PREFIX), "buckets"))
    families = len(keys.USER_FAMILIES)
    assert all(3 < n <= families * buckets + 3 for n in per_version)
    assert own_redis.dbsize() == sum(per_version) + 4  # + current, previous, versions, runs
    for version in published[:-2]:
        assert list(own_redis.scan_iter(match=keys.version_prefix(version, PREFIX) + "*")) == []
    # Every key of a version expires by itself (safety TTL), the pointers do not.
    ttl = cfg.ttl_days * 86_400
    version_keys = list(own_redis.scan_iter(match=f"{PREFIX}:v:*", count=10_000))
    assert len(version_keys) == sum(per_version)
    for name in version_keys:
        assert 0 < own_redis.ttl(name) <= ttl
    for pointer in (keys.current_key(PREFIX), keys.previous_key(PREFIX)):
        assert own_redis.ttl(pointer) == -1
