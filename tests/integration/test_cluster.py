"""Publishing to a local 3-master Redis Cluster started by the fixture (issue #5)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from redis.cluster import RedisCluster

from recsys_batch.config import RedisConfig
from recsys_batch.publish import keys, store, versions
from tests.conftest import redis_server_binary, start_redis_server

pytestmark = pytest.mark.integration


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid (<= 65535)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20_000, 45_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    msg = "no free port pair for a cluster node"
    raise RuntimeError(msg)


def redis_cli() -> str | None:
    found = shutil.which("redis-cli")
    if found:
        return found
    sibling = Path(redis_server_binary()).with_name("redis-cli")
    return str(sibling) if sibling.exists() else None


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cli = redis_cli()
    if cli is None:
        pytest.skip("redis-cli is needed to create a cluster")
    procs = []
    ports = []
    try:
        for n in range(3):
            workdir = tmp_path_factory.mktemp(f"cluster{n}")
            port = cluster_port()
            proc, port = start_redis_server(
                workdir,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(workdir / "nodes.conf"),
                port=port,
            )
            procs.append(proc)
            ports.append(port)
        subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports]]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = subprocess.run(
                [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True
            ).stdout
            if "cluster_state:ok" in info:
                break
            time.sleep(0.2)
        else:
            pytest.fail("cluster did not become ok")
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def recs(users: int, marker: int) -> pl.DataFrame:
    ids = np.arange(1, users + 1, dtype=np.int64)
    return pl.DataFrame(
        {
            "user_id": np.repeat(ids, 3),
            "item_id": np.tile(np.arange(1, 4, dtype=np.int64) + 10 * marker, users),
            "rank": np.tile(np.arange(1, 4, dtype=np.int32), users),
            "score": np.ones(users * 3, dtype=np.float32),
        }
    )


class TestCluster:
    def test_publish_read_back_rollback(self, cluster_url: str) -> None:
        cfg = RedisConfig(url=cluster_url, chunk_size=300, key_prefix="c1")
        client = store.connect(cfg)
        assert isinstance(client, RedisCluster)
        assert len(client.get_primaries()) == 3
        v1 = versions.publish_version(client, recs(1_000, 1), [5], None, {}, cfg)
        v2 = versions.publish_version(client, recs(1_000, 2), [6], None, {}, cfg)
        v3 = versions.publish_version(client, recs(1_000, 3), [7], None, {}, cfg)
        assert client.get("c1:current").decode() == v3
        assert client.get("c1:previous").decode() == v2
        assert client.get(keys.user_key(v3, 1000, "c1")) == b"31,32,33"
        assert client.get(keys.popular_key(v3, "c1")) == b"7"
        # Keys are spread over the three masters.
        sizes = [client.dbsize(target_nodes=node) for node in client.get_primaries()]
        assert all(size > 0 for size in sizes)
        # The oldest version was removed from every node.
        assert list(client.scan_iter(match=f"c1:v:{v1}:*")) == []
        assert versions.rollback(client, cfg) == (v2, v3)
        assert client.get("c1:current").decode() == v2
        assert client.get(keys.user_key(v2, 7, "c1")) == b"21,22,23"
        client.close()
