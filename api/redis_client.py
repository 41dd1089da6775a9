"""The API's one asynchronous Redis client (redis.asyncio; hiredis parses replies)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from recsys_batch.config import RedisConfig
from recsys_batch.errors import ConfigError
from recsys_batch.publish.keys import parse_url, tls_options

AsyncClient = aioredis.Redis | RedisCluster


def resolve_url(cfg: RedisConfig) -> tuple[str, bool]:
    """The URL to connect to and whether it names a Redis Cluster.

    Without ``cfg.url`` (``REDIS_URL`` / ``RECSYS_REDIS__URL``) this is the unix socket of the
    embedded Redis the batch wrote to (started if needed).

    Raises
    ------
    ConfigError
        Unknown URL scheme, or no URL and no embedded Redis available.
    """
    if not cfg.url:
        try:
            from recsys_batch.publish.embedded import embedded_url  # noqa: PLC0415 - optional, lazy
        except ImportError as exc:  # pragma: no cover - the module ships with the package
            msg = "no Redis configured (fix: set REDIS_URL or RECSYS_REDIS__URL)"
            raise ConfigError(msg) from exc
        try:
            return embedded_url(cfg), False
        except RuntimeError as exc:  # EmbeddedRedisError
            msg = f"cannot start the embedded Redis: {exc} (fix: set REDIS_URL)"
            raise ConfigError(msg) from exc
    return parse_url(cfg.url, cluster=cfg.cluster)


def client_options(cfg: RedisConfig, url: str, timeout: float) -> dict[str, Any]:
    """Timeouts that fail fast and one immediate retry (a pooled connection may be stale
    after Redis restarted: the retry reconnects, so the service recovers by itself)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
    }
    options.update(tls_options(url, cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file))
    return options


def make_client(cfg: RedisConfig, timeout: float) -> tuple[AsyncClient, bool]:
    """A lazily connecting client for ``cfg`` and whether it is a cluster client.

    Raises
    ------
    ConfigError
        See :func:`resolve_url`; also a malformed URL.
    """
    url, cluster = resolve_url(cfg)
    options = client_options(cfg, url, timeout)
    try:
        if cluster:
            return RedisCluster.from_url(url, **options), True
        return aioredis.Redis.from_url(url, **options), False
    except ValueError:
        msg = "invalid Redis URL (fix: redis://[user:password@]host:port/db)"
        raise ConfigError(msg) from None
