"""``recsys nightly-batch`` into a local 3-master Redis Cluster started by the fixture (#5, #15).

The real model on small synthetic data publishes through a ``redis+cluster://`` URL; the
version is then whole on the cluster (every user key the run saved, on whichever master
holds its slot) and the API reads it from there."""

from __future__ import annotations

import logging
import random
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster
from typer.testing import CliRunner

from api.main import create_app
from cli.main import app
from recsys_batch.config import Settings
from recsys_batch.publish import keys, status, store
from tests.conftest import redis_server_binary, start_redis_server
from tests.nightly import (
    expected_values,
    saved_recommendations,
    stored_values,
    user_bucket_keys,
    version_keys,
)
from tests.small import small_env

with warnings.catch_warnings():  # starlette warns about httpx at import; nothing to fix here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration
runner = CliRunner()


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


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """``nightly-batch`` installs its log handler on the root logger; put the old ones back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_restore_logging")
class TestCluster:
    def test_nightly_publish_read_back_rollback(
        self, cluster_url: str, key_prefix: str, tmp_path: Path
    ) -> None:
        env = {
            **small_env(users=300, shard_users=100),
            "REDIS_URL": cluster_url,
            "RECSYS_REDIS__KEY_PREFIX": key_prefix,
            "RECSYS_REDIS__CHUNK_SIZE": "40",
            "RECSYS_RUN__RUNS_DIR": str(tmp_path / "runs"),
            "RECSYS_RUN__LOCK_FILE": str(tmp_path / "nightly.lock"),
        }
        settings = Settings(redis={"url": cluster_url, "key_prefix": key_prefix})
        client = store.connect(settings.redis)
        assert isinstance(client, RedisCluster)
        assert len(client.get_primaries()) == 3
        published = []
        for _ in range(3):
            run = runner.invoke(
                app, ["nightly-batch", "--source", "synthetic", "--no-gate"], env=env
            )
            assert run.exit_code == 0, run.output
            published.append(status.live_version(client, settings.redis))
        v1, v2, v3 = published
        assert len(set(published)) == 3
        assert status.previous_version(client, settings.redis) == v2

        # The live version is whole: every user the run saved, with its list.
        run_dir = sorted((tmp_path / "runs").iterdir())[-1]
        expected = expected_values(saved_recommendations(run_dir))
        assert len(expected) == 300
        users = sorted(expected)
        assert stored_values(client, v3, key_prefix) == expected
        info = status.version_info(client, v3, settings.redis)
        assert (info.state, info.users) == (keys.STATE_COMPLETE, 300)
        assert client.get(keys.popular_key(v3, key_prefix))
        # Keys are spread over the three masters.
        sizes = [client.dbsize(target_nodes=node) for node in client.get_primaries()]
        assert all(size > 0 for size in sizes)
        # The oldest version was removed from every node; two are kept.
        assert version_keys(client, v1, key_prefix) == set()
        v2_users = status.version_user_ids(client, v2, settings.redis)
        assert len(v2_users) == 300
        assert version_keys(client, v2, key_prefix) == user_bucket_keys(
            client, v2, key_prefix, v2_users
        ) | {
            keys.popular_key(v2, key_prefix),
            keys.items_key(v2, key_prefix),
            keys.meta_key(v2, key_prefix),
        }
        assert status.all_versions(client, settings.redis) == [v2, v3]

        # The API reads the live version from the cluster.
        user = users[7]
        api_settings = Settings(
            redis={"url": cluster_url, "key_prefix": key_prefix},
            api={"current_cache_seconds": 0.0},
        )
        service = create_app(api_settings)
        with TestClient(service) as http:
            assert service.state.lookup.cluster
            one = http.get(f"/v1/recommendations/{user}").json()
            batch = http.post("/v1/recommendations", json={"user_ids": users[:50]}).json()
            rolled = runner.invoke(app, ["rollback"], env=env)
            assert rolled.exit_code == 0, rolled.output
            after = http.get(f"/v1/recommendations/{user}").json()
        assert (one["version"], one["source"]) == (v3, "personal")
        assert one["items"] == expected[user][:5]
        assert [r["items"] for r in batch["results"]] == [expected[u][:5] for u in users[:50]]
        assert status.live_version(client, settings.redis) == v2
        assert after["version"] == v2
        assert after["items"] == stored_values(client, v2, key_prefix, [user])[user][:5]
        client.close()
