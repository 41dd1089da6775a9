"""Connect to the Redis that holds the published recommendations.

Three places Redis can live, chosen by :class:`~recsys_batch.config.RedisConfig`:

- ``url`` is ``redis://`` or ``rediss://`` (TLS; password and ACL user in the URL, CA and
  client certificate from ``tls_*_file``): one server;
- ``url`` is ``redis+cluster://`` / ``rediss+cluster://``, or ``cluster = true``: a Redis
  Cluster reached through any of its nodes;
- ``url`` is unset: the embedded, persistent server of :mod:`recsys_batch.publish.embedded`.

Passwords never reach logs or error messages: use :func:`mask_url`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from recsys_batch.config import RedisConfig
from recsys_batch.errors import ConfigError, PublishError
from recsys_batch.publish.embedded import EmbeddedRedisError, embedded_url
from recsys_batch.publish.keys import mask_text, mask_url, parse_url, tls_options

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster
T = TypeVar("T")
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)
"""Errors worth a retry: the connection broke or a reply timed out."""


def resolve_url(cfg: RedisConfig) -> tuple[str, bool]:
    """The URL to connect to and whether it names a cluster.

    Starts the embedded server when no URL is configured.

    Raises
    ------
    ConfigError
        The URL's scheme is not one we know.
    PublishError
        The embedded server could not be started.
    """
    if not cfg.url:
        try:
            return embedded_url(cfg), False
        except EmbeddedRedisError as exc:
            raise PublishError(str(exc)) from exc
    return parse_url(cfg.url, cluster=cfg.cluster)


def connect(cfg: RedisConfig, *, check: bool = True) -> Client:
    """A client for the configured Redis, checked with ``PING`` unless ``check`` is False.

    Returns ``redis.Redis`` (one server, TLS or not, or the embedded one) or
    ``redis.cluster.RedisCluster``.

    Raises
    ------
    ConfigError
        Bad URL (exit 2).
    PublishError
        Redis is unreachable or refused the credentials (exit 4); the message masks the
        password.
    """
    url, cluster = resolve_url(cfg)
    options: dict[str, Any] = {
        "socket_timeout": cfg.socket_timeout_seconds,
        "socket_connect_timeout": cfg.connect_timeout_seconds,
        **tls_options(url, cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file),
    }
    try:
        client: Client
        if cluster:
            client = RedisCluster.from_url(url, **options)
        else:
            client = redis.Redis.from_url(url, health_check_interval=30, **options)
        if check:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        shown = mask_text(f"{type(exc).__name__}: {exc}", cfg.url)
        msg = (
            f"cannot reach Redis at {mask_url(cfg.url)}: {shown} "
            "(fix: check REDIS_URL, credentials and that the server is up)"
        )
        raise PublishError(msg) from None
    except ValueError:  # from_url on a malformed URL
        # Not str(exc): it quotes the piece it could not read (e.g. a port), which for an
        # unencoded '#', '/' or '?' in the password is part of the password.
        msg = (
            f"invalid Redis URL {mask_url(cfg.url)} "
            "(fix: percent-encode special characters of the password, e.g. '#' as %23, "
            "'/' as %2F, '?' as %3F, '@' as %40)"
        )
        raise ConfigError(msg) from None
    return client


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client."""
    return isinstance(client, RedisCluster)


def describe(cfg: RedisConfig) -> str:
    """Where recommendations are published, for logs (password masked)."""
    if not cfg.url:
        return f"embedded Redis under {cfg.embedded_dir}"
    return mask_url(cfg.url)


def with_retries(func: Callable[[], T], cfg: RedisConfig, what: str) -> T:
    """Call ``func``; retry on connection errors and timeouts with exponential backoff.

    Raises
    ------
    PublishError
        Still failing after ``cfg.retries`` retries, or Redis answered with an error.
    """
    attempts = cfg.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return func()
        except RETRYABLE as exc:
            if attempt == attempts:
                msg = (
                    f"Redis failed during {what} after {attempts} attempts: "
                    f"{type(exc).__name__}: {exc} (the live version was left untouched)"
                )
                raise PublishError(msg) from exc
            delay = cfg.retry_backoff_seconds * 2 ** (attempt - 1)
            log.warning(
                "Redis %s failed (%s), retry %d/%d in %.1fs",
                what,
                type(exc).__name__,
                attempt,
                cfg.retries,
                delay,
            )
            time.sleep(delay)
        except redis.RedisError as exc:
            msg = f"Redis refused {what}: {type(exc).__name__}: {exc}"
            if isinstance(exc, redis.exceptions.OutOfMemoryError):
                # redis-py drops the server's "OOM" code from the text: say it, and the fix.
                msg += (
                    " (OOM command not allowed: Redis reached maxmemory; raise maxmemory or "
                    "free memory, the live version was left untouched)"
                )
            raise PublishError(msg) from exc
    raise AssertionError  # pragma: no cover - the loop returns or raises
