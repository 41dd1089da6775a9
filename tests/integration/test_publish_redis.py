"""The nightly publish against a real Redis: raw path, readers never see a mix, faults (#5, #7).

Every version here is written by ``run_nightly`` with the real two-stage model on small
synthetic data (several shards of 100 users), so the writer, the version lifecycle and the
executor are the ones that ship. Faults come from a TCP proxy in front of Redis or from a
redis-server of the test's own.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from recsys_batch.config import Settings
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys, status, writer
from recsys_batch.run import pipeline
from tests.conftest import start_redis_server
from tests.nightly import (
    expected_values,
    saved_recommendations,
    small_run_settings,
    stored_values,
)
from tests.under_load import Answers

pytestmark = pytest.mark.integration

USERS = 300


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, key_prefix: str) -> Settings:
    return small_run_settings(tmp_path, redis_url, key_prefix, users=USERS)


def nightly(settings: Settings, **redis_update: Any) -> pipeline.RunResult:
    """One publishing run without the gate (the gate is not the subject here)."""
    if redis_update:
        settings = settings.model_copy(
            update={"redis": settings.redis.model_copy(update=redis_update)}
        )
    return pipeline.run_nightly(settings, gate=False)


def assert_whole(client: redis.Redis, result: pipeline.RunResult, prefix: str) -> None:
    """Every user the run saved is in its version with the saved list, and it is live."""
    version = result.version or ""
    expected = expected_values(saved_recommendations(result.run_dir))
    users = sorted(expected)
    assert stored_values(client, version, prefix) == expected
    assert client.hget(keys.meta_key(version, prefix), "users") == str(len(users)).encode()
    assert client.get(keys.current_key(prefix)) == version.encode()


class FaultProxy:
    """TCP proxy to Redis that cuts the connection on which ``trigger`` is first sent.

    The data carrying ``trigger`` is not forwarded. ``forever``: the proxy then dies for
    good (Redis is gone); otherwise only that connection is cut and new ones pass.
    """

    def __init__(self, upstream: tuple[str, int], trigger: bytes, *, forever: bool) -> None:
        self.upstream = upstream
        self.trigger = trigger
        self.forever = forever
        self.cuts = 0
        self.dead = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.dead.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [client, server]
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, ...] | None
    ) -> None:
        try:
            while data := src.recv(65536):
                if pair is not None and self.trigger in data:
                    with self.lock:
                        first = self.cuts == 0
                        self.cuts += 1
                    if first or self.forever:
                        self.kill() if self.forever else self._close(pair)
                        return
                dst.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _close(sockets: tuple[socket.socket, ...] | list[socket.socket]) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def kill(self) -> None:
        self.dead.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            self._close(self.sockets)


@pytest.fixture
def upstream(redis_url: str) -> tuple[str, int]:
    client = redis.Redis.from_url(redis_url)
    kwargs = client.connection_pool.connection_kwargs
    client.close()
    if "host" not in kwargs:
        pytest.skip("fault proxy needs a TCP Redis")
    return kwargs["host"], int(kwargs.get("port", 6379))


class TestRealRedis:
    def test_layout_and_ttl(
        self,
        settings: Settings,
        real_redis: redis.Redis,
        key_prefix: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Every shard writes through redis-py's public pipeline (#18: no raw RESP)."""
        shards: list[int] = []
        original = writer.write_users

        def counted(client: Any, version: str, recs: Any, *args: Any, **kw: Any) -> writer.Written:
            written = original(client, version, recs, *args, **kw)
            shards.append(written.users)
            return written

        monkeypatch.setattr(writer, "write_users", counted)
        result = nightly(settings)
        assert len(shards) >= 2 and sum(shards) == result.users  # one call per shard
        assert_whole(real_redis, result, key_prefix)
        version = result.version or ""
        popular = real_redis.get(keys.popular_key(version, key_prefix))
        assert len(keys.decode_items(popular)) == settings.publish.top_n
        ttl = settings.redis.ttl_days * 86_400
        for name in real_redis.scan_iter(keys.version_prefix(version, key_prefix) + "*"):
            assert ttl - 60 < real_redis.ttl(name) <= ttl

    def test_reader_never_sees_mixed_or_missing(
        self, tmp_path: Path, redis_url: str, key_prefix: str, real_redis: redis.Redis
    ) -> None:
        """Each run draws other synthetic data (seed), so each version has its own lists."""

        def run(seed: int) -> pipeline.RunResult:
            return nightly(
                small_run_settings(tmp_path, redis_url, key_prefix, data={"synthetic_seed": seed})
            )

        first = run(1)
        users = sorted(expected_values(saved_recommendations(first.run_dir)))
        stop = threading.Event()
        # rows: (version, user, value, popular, state); one reader, reading without pause
        seen = Answers(readers=1)

        def reader() -> None:
            client = redis.Redis.from_url(redis_url)
            rng = random.Random(1)
            try:
                while not stop.is_set():
                    version = client.get(keys.current_key(key_prefix)).decode()
                    user = rng.choice(users)
                    value = stored_values(client, version, key_prefix, [user]).get(user)
                    popular = client.get(keys.popular_key(version, key_prefix))
                    state = client.hget(keys.meta_key(version, key_prefix), "state")
                    seen.add(0, version, [(version, user, value, popular, state)])
            except Exception as exc:  # noqa: BLE001 - any error is a finding, reported below
                seen.fail(f"{type(exc).__name__}: {exc}")
            finally:
                client.close()

        # Each run starts only once the reader has read the version live before it, so both
        # flips happen while it reads, however slow the machine (an event, not a count).
        thread = threading.Thread(target=reader)
        thread.start()
        try:
            results = [first]
            for seed in (2, 3):
                seen.wait_until_every_reader_saw(results[-1].version or "")
                results.append(run(seed))
            seen.wait_until_every_reader_saw(results[-1].version or "")
        finally:
            stop.set()
            thread.join(timeout=30)
        by_version = {r.version: expected_values(saved_recommendations(r.run_dir)) for r in results}
        distinct = {tuple((u, tuple(items)) for u, items in v.items()) for v in by_version.values()}
        assert len(distinct) == 3  # distinct versions
        assert seen.failures == []
        problems = [
            row
            for row in seen.rows
            if row[0] not in by_version
            or row[2] != by_version[row[0]].get(row[1])
            or row[3] is None
            or row[4] != keys.STATE_COMPLETE.encode()
        ]
        assert problems == []
        assert seen.versions() == set(by_version)  # each of the three was read

    def test_connection_cut_while_writing_users_is_retried(
        self,
        settings: Settings,
        real_redis: redis.Redis,
        key_prefix: str,
        upstream: tuple[str, int],
    ) -> None:
        proxy = FaultProxy(upstream, b":u:", forever=False)
        try:
            result = nightly(settings, url=proxy.url, chunk_size=40)
        finally:
            proxy.kill()
        assert proxy.cuts >= 1
        assert result.status == "published"
        assert_whole(real_redis, result, key_prefix)

    def test_redis_gone_mid_publish_leaves_live_version(
        self,
        settings: Settings,
        real_redis: redis.Redis,
        key_prefix: str,
        upstream: tuple[str, int],
    ) -> None:
        live = nightly(settings)
        proxy = FaultProxy(upstream, b":u:", forever=True)
        with pytest.raises(PublishError) as info:
            nightly(settings, url=proxy.url)
        assert info.value.exit_code == 4
        assert proxy.dead.is_set()
        assert_whole(real_redis, live, key_prefix)  # still live, still whole
        cfg = settings.redis
        half = [v for v in status.all_versions(real_redis, cfg) if v != live.version]
        assert len(half) == 1  # abandon could not reach Redis either
        assert status.version_info(real_redis, half[0], cfg).state == keys.STATE_WRITING
        # A rerun succeeds and removes the half-written version.
        fresh = nightly(settings)
        assert status.all_versions(real_redis, cfg) == [live.version, fresh.version]
        assert list(real_redis.scan_iter(keys.version_prefix(half[0], key_prefix) + "*")) == []

    def test_out_of_memory_is_publish_error(self, settings: Settings, tmp_path: Path) -> None:
        """A full Redis refuses the user writes (OOM): PublishError, nothing flipped.

        On a redis-server of this test only: a memory limit on the shared server would make
        every other test's writes fail meanwhile. The server is filled up to 120 kB below its
        limit: room for the run's connections and to begin the version (about 70 kB), not
        for its users as well (more than 200 kB with their replies in flight).
        """
        limit = 4 * 1024 * 1024
        proc, port = start_redis_server(
            tmp_path, "--maxmemory", str(limit), "--maxmemory-policy", "noeviction"
        )
        client = redis.Redis(host="127.0.0.1", port=port)
        prefix = settings.redis.key_prefix
        try:
            assert used_memory(client) < limit / 2  # room to start
            fill(client, limit - 120_000)
            with pytest.raises(PublishError, match="OOM") as info:
                nightly(settings, url=f"redis://127.0.0.1:{port}/0")
            assert info.value.exit_code == 4
            assert "user write" in str(info.value)
            assert client.get(keys.current_key(prefix)) is None
        finally:
            client.close()
            proc.kill()
            proc.wait(timeout=10)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def fill(client: redis.Redis, target: int) -> None:
    """Add filler keys until ``used_memory`` is just under ``target`` bytes."""
    piece = 32_768  # small values: a big one would itself go over the limit in transit
    for n in range(10_000):
        room = target - used_memory(client)
        if room < 1_000:
            return
        client.set(f"filler:{n}", b"x" * min(piece, room // 2))
    msg = "could not fill the server"
    raise AssertionError(msg)


class TestConnectFailure:
    def test_redis_gone_when_writer_connects_is_publish_error(
        self,
        settings: Settings,
        real_redis: redis.Redis,
        key_prefix: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Regression (issue #7): the writer's own connect was outside the retry wrapper."""
        original: Callable[..., writer.Written] = writer.write_users

        def redis_vanishes(client: redis.Redis, *args: Any, **kw: Any) -> writer.Written:
            client.connection_pool.connection_kwargs["port"] = 1  # nothing listens there
            client.connection_pool.reset()  # drop pooled connections to the real port
            return original(client, *args, **kw)

        monkeypatch.setattr(writer, "write_users", redis_vanishes)
        with pytest.raises(PublishError, match=r"user write after 4 attempts"):
            nightly(settings)
        assert real_redis.get(keys.current_key(key_prefix)) is None
