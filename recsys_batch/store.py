"""Connect to the Redis that holds the published recommendations.

Three places Redis can live, chosen by :class:`~recsys_batch.config.RedisConfig`:

- ``url`` is ``redis://`` or ``rediss://`` (TLS; password and ACL user in the URL, CA and
  client certificate from ``tls_*_file``): one server;
- ``url`` is ``redis+cluster://`` / ``rediss+cluster://``, or ``cluster = true``: a Redis
  Cluster reached through any of its nodes;
- ``url`` is unset: the embedded, persistent server of :mod:`recsys_batch.embedded`.

Passwords never reach logs or error messages: use :func:`mask_url`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from recsys_batch.config import RedisConfig
from recsys_batch.embedded import EmbeddedRedisError, embedded_url
from recsys_batch.errors import ConfigError, PublishError

Client = redis.Redis | RedisCluster

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES = {"redis", "rediss", "unix"}


def mask_url(url: str | None) -> str:
    """The URL with its password replaced by ``***`` (safe for logs and errors)."""
    if not url:
        return "embedded"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mask_text(text: str, url: str | None) -> str:
    """``text`` with any occurrence of the URL's password replaced by ``***``."""
    if not url:
        return text
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    if not password:
        return text
    return re.sub(re.escape(password), "***", text)


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
    scheme = cfg.url.split("://", 1)[0].lower() if "://" in cfg.url else ""
    if scheme in _CLUSTER_SCHEMES:
        return _CLUSTER_SCHEMES[scheme] + cfg.url[len(scheme) :], True
    if scheme in _PLAIN_SCHEMES:
        return cfg.url, cfg.cluster
    msg = (
        f"unsupported Redis URL {mask_url(cfg.url)}: "
        "use redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://"
    )
    raise ConfigError(msg)


def _tls_options(cfg: RedisConfig, url: str) -> dict[str, Any]:
    if not url.lower().startswith("rediss://"):
        return {}
    options: dict[str, Any] = {}
    if cfg.tls_ca_file is not None:
        options["ssl_ca_certs"] = str(cfg.tls_ca_file)
    if cfg.tls_cert_file is not None:
        options["ssl_certfile"] = str(cfg.tls_cert_file)
    if cfg.tls_key_file is not None:
        options["ssl_keyfile"] = str(cfg.tls_key_file)
    return options


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
        **_tls_options(cfg, url),
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
    except ValueError as exc:  # from_url on a malformed URL
        msg = f"invalid Redis URL {mask_url(cfg.url)}: {mask_text(str(exc), cfg.url)}"
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
