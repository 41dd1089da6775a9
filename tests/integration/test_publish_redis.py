"""versions.py against a real Redis: fast path, readers never see a mix, faults (issues #5, #7)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys, versions
from tests.conftest import start_redis_server

pytestmark = pytest.mark.integration


def synthetic_recs(users: int, marker: int) -> pl.DataFrame:
    """Every user of version ``marker`` gets items marker*10+1 .. marker*10+5."""
    ids = np.arange(1, users + 1, dtype=np.int64)
    return pl.DataFrame(
        {
            "user_id": np.repeat(ids, 5),
            "item_id": np.tile(np.arange(1, 6, dtype=np.int64) + marker * 10, users),
            "rank": np.tile(np.arange(1, 6, dtype=np.int32), users),
            "score": np.ones(users * 5, dtype=np.float32),
        }
    )


def expected_value(marker: int) -> bytes:
    return keys.encode_items([marker * 10 + r for r in range(1, 6)]).encode()


@pytest.fixture
def cfg(redis_url: str, key_prefix: str) -> RedisConfig:
    return RedisConfig(
        url=redis_url, key_prefix=key_prefix, chunk_size=500, retry_backoff_seconds=0.01
    )


class FaultProxy:
    """TCP proxy to Redis that dies for good after forwarding ``cut_after`` client bytes."""

    def __init__(self, upstream: tuple[str, int], cut_after: int) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.forwarded = 0
        self.dead = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.dead.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream:
                    with self.lock:
                        self.forwarded += len(data)
                        over = self.forwarded > self.cut_after
                    if over:
                        self.kill()
                        return
                dst.sendall(data)
        except OSError:
            pass

    def kill(self) -> None:
        self.dead.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()


@pytest.fixture
def upstream(redis_url: str) -> tuple[str, int]:
    client = redis.Redis.from_url(redis_url)
    kwargs = client.connection_pool.connection_kwargs
    client.close()
    if "host" not in kwargs:
        pytest.skip("fault proxy needs a TCP Redis")
    return kwargs["host"], int(kwargs.get("port", 6379))


class TestRealRedis:
    def test_fast_path_layout_and_ttl(self, real_redis: redis.Redis, cfg: RedisConfig) -> None:
        version = versions.publish_version(
            real_redis, synthetic_recs(2_000, 1), [7, 8], None, {}, cfg
        )
        assert versions.fast_path_ok(real_redis)
        p = cfg.key_prefix
        assert real_redis.get(f"{p}:current").decode() == version
        assert real_redis.get(keys.user_key(version, 1999, p)) == expected_value(1)
        assert real_redis.get(keys.popular_key(version, p)) == b"7,8"
        ttl = real_redis.ttl(keys.user_key(version, 5, p))
        assert cfg.ttl_days * 86_400 - 60 < ttl <= cfg.ttl_days * 86_400
        assert real_redis.hget(keys.meta_key(version, p), "users") == b"2000"

    def test_memory_bounded_to_two_versions(
        self, real_redis: redis.Redis, cfg: RedisConfig
    ) -> None:
        for marker in range(1, 6):
            versions.publish_version(real_redis, synthetic_recs(300, marker), [1], None, {}, cfg)
        user_keys = list(real_redis.scan_iter(f"{cfg.key_prefix}:v:*:u:*", count=10_000))
        assert len(user_keys) == 2 * 300
        assert real_redis.zcard(f"{cfg.key_prefix}:versions") == 2

    def test_reader_never_sees_mixed_or_missing(
        self, real_redis: redis.Redis, cfg: RedisConfig, redis_url: str
    ) -> None:
        users = 3_000
        first = versions.publish_version(
            real_redis, synthetic_recs(users, 0), [0], None, {"marker": 0}, cfg
        )
        assert first
        stop = threading.Event()
        problems: list[str] = []
        reads = {"n": 0}
        p = cfg.key_prefix

        def reader() -> None:
            client = redis.Redis.from_url(redis_url)
            rng = np.random.default_rng(1)
            while not stop.is_set():
                version = client.get(f"{p}:current").decode()
                marker = int(client.hget(keys.meta_key(version, p), "marker") or -1)
                user = int(rng.integers(1, users + 1))
                value = client.get(keys.user_key(version, user, p))
                popular = client.get(keys.popular_key(version, p))
                state = client.hget(keys.meta_key(version, p), "state")
                if value != expected_value(marker) or popular != str(marker).encode():
                    problems.append(f"{version} user {user}: {value!r} {popular!r}")
                if state != b"complete":
                    problems.append(f"{version} state {state!r}")
                reads["n"] += 1
            client.close()

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for marker in range(1, 7):
                versions.publish_version(
                    real_redis,
                    synthetic_recs(users, marker),
                    [marker],
                    None,
                    {"marker": marker},
                    cfg,
                )
        finally:
            stop.set()
            thread.join(timeout=30)
        assert problems == []
        assert reads["n"] > 20

    def test_connection_killed_mid_publish_is_retried(
        self, real_redis: redis.Redis, cfg: RedisConfig
    ) -> None:
        users = 100_000
        big = cfg.model_copy(update={"chunk_size": 5_000})
        name = f"publish-{big.key_prefix}"
        # Only this publisher's connections are killed, never other clients of a shared server.
        publisher = redis.Redis.from_url(big.url, client_name=name)
        killer = redis.Redis.from_url(big.url)
        killed = {"n": 0}
        done = threading.Event()

        def kill_when_writing() -> None:
            while not done.is_set():
                if killer.zcard(f"{big.key_prefix}:versions"):
                    for client in killer.client_list():
                        if client.get("name") == name:
                            killed["n"] += int(killer.client_kill_filter(_id=client["id"]))
                    return
                time.sleep(0.001)

        thread = threading.Thread(target=kill_when_writing)
        thread.start()
        try:
            version = versions.publish_version(
                publisher, synthetic_recs(users, 2), [1], None, {}, big
            )
        finally:
            done.set()
            thread.join()
            killer.close()
            publisher.close()
        assert killed["n"] >= 1
        assert real_redis.get(f"{big.key_prefix}:current").decode() == version
        meta = keys.meta_key(version, big.key_prefix)
        assert real_redis.hget(meta, "users") == str(users).encode()
        assert real_redis.get(keys.user_key(version, users, big.key_prefix)) == expected_value(2)
        # Bulk cleanup here: the fixture's key-by-key teardown is slow on 10^5 keys.
        versions.unlink_version(real_redis, version, big)

    def test_redis_gone_mid_publish_leaves_live_version(
        self, real_redis: redis.Redis, cfg: RedisConfig, upstream: tuple[str, int]
    ) -> None:
        live = versions.publish_version(real_redis, synthetic_recs(1_000, 1), [1], None, {}, cfg)
        proxy = FaultProxy(upstream, cut_after=20_000)
        broken = cfg.model_copy(update={"url": f"redis://127.0.0.1:{proxy.port}/0"})
        client = redis.Redis.from_url(broken.url, socket_timeout=2, socket_connect_timeout=1)
        with pytest.raises(PublishError) as info:
            versions.publish_version(client, synthetic_recs(5_000, 2), [2], None, {}, broken)
        assert info.value.exit_code == 4
        assert proxy.dead.is_set()
        assert real_redis.get(f"{cfg.key_prefix}:current").decode() == live
        assert real_redis.get(keys.user_key(live, 10, cfg.key_prefix)) == expected_value(1)
        half = [v for v in versions.all_versions(real_redis, cfg) if v != live]
        assert len(half) == 1
        assert real_redis.hget(keys.meta_key(half[0], cfg.key_prefix), "state") == b"writing"
        # A rerun succeeds and removes the half-written version.
        fresh = versions.publish_version(real_redis, synthetic_recs(1_000, 3), [3], None, {}, cfg)
        assert versions.all_versions(real_redis, cfg) == [live, fresh]
        assert list(real_redis.scan_iter(keys.version_prefix(half[0], cfg.key_prefix) + "*")) == []

    def test_out_of_memory_is_publish_error(self, key_prefix: str, tmp_path: Path) -> None:
        """A full Redis refuses the writes (OOM): PublishError, nothing flipped.

        On a redis-server of this test only: a memory limit on the shared server would make
        every other test's writes fail meanwhile.
        """
        limit = 4 * 1024 * 1024
        proc, port = start_redis_server(
            tmp_path, "--maxmemory", str(limit), "--maxmemory-policy", "noeviction"
        )
        client = redis.Redis(host="127.0.0.1", port=port)
        cfg = RedisConfig(
            url=f"redis://127.0.0.1:{port}/0",
            key_prefix=key_prefix,
            chunk_size=500,
            retry_backoff_seconds=0.01,
        )
        try:
            assert int(client.info("memory")["used_memory"]) < limit / 2  # room to start
            with pytest.raises(PublishError, match="OOM|refused"):
                versions.publish_version(client, synthetic_recs(50_000, 1), [1], None, {}, cfg)
            assert client.get(f"{key_prefix}:current") is None
        finally:
            client.close()
            proc.kill()
            proc.wait(timeout=10)


class TestConnectFailure:
    def test_redis_gone_when_writer_connects_is_publish_error(
        self,
        redis_url: str,
        cfg: RedisConfig,
        upstream: tuple[str, int],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Regression (issue #7): the writer's own connect was outside the retry wrapper."""
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5)
        original = versions.write_users_raw

        def redis_vanishes(*args: object) -> list[bytes]:
            client.connection_pool.connection_kwargs["port"] = 1  # nothing listens there
            client.connection_pool.reset()  # drop pooled connections to the real port
            return original(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(versions, "write_users_raw", redis_vanishes)
        with pytest.raises(PublishError, match="connect"):
            versions.publish_version(client, synthetic_recs(100, 1), [1], None, {}, cfg)
        client.connection_pool.connection_kwargs["port"] = upstream[1]
        client.connection_pool.reset()
        assert client.get(f"{cfg.key_prefix}:current") is None
        for version in versions.all_versions(client, cfg):
            versions.unlink_version(client, version, cfg)
        client.close()
