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
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import RedisCluster

from recsys_batch.config import RedisConfig
from recsys_batch.errors import ConfigError, PublishError
from recsys_batch.publish.embedded import EmbeddedRedisError, embedded_url

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster
T = TypeVar("T")
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)
"""Errors worth a retry: the connection broke or a reply timed out."""

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES = {"redis", "rediss", "unix"}


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme, userinfo, rest)`` split by hand, or None when the URL has no ``@``.

    ``urlsplit`` cannot be trusted with credentials: a password pasted unencoded with a
    ``#``, ``/`` or ``?`` ends its authority early, so it sees no password at all. The last
    ``@`` after ``://`` ends the userinfo whatever the password holds (over-masking a URL
    whose path or query has an ``@`` is the safe side).
    """
    scheme, sep, remainder = url.partition("://")
    if not sep:
        return None
    userinfo, at, rest = remainder.rpartition("@")
    if not at:
        return None
    return scheme, userinfo, rest


def mask_url(url: str | None) -> str:
    """The URL with its password replaced by ``***`` (safe for logs and errors).

    Examples: ``redis://app:s3cret@h:6379/0`` -> ``redis://app:***@h:6379/0``; userinfo
    without a ``:`` (it may be a bare password) -> ``redis://***:***@h:6379/0``.
    """
    if not url:
        return "embedded"
    split = _userinfo(url)
    if split is None:
        return url
    scheme, userinfo, rest = split
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user if colon else '***'}:***@{rest}"


def _secrets(url: str) -> list[str]:
    """Every form of the URL's password that a message could quote, longest first."""
    found: set[str] = set()
    split = _userinfo(url)
    if split is not None:
        user, colon, password = split[1].partition(":")
        secret = password if colon else user
        found.add(secret)
        # What urlsplit/redis-py read as the port when an unencoded '#', '/' or '?' ends
        # the authority early ("batch:12#..." -> port 12): an error may quote that piece.
        head = re.split(r"[#/?]", secret, maxsplit=1)[0]
        if head != secret and len(head) >= 2:
            found.add(head)
    try:
        parsed = urlsplit(url).password
    except ValueError:
        parsed = None
    if parsed:
        found.add(parsed)
    found |= {unquote(secret) for secret in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_text(text: str, url: str | None) -> str:
    """``text`` with the URL masked and any occurrence of its password replaced by ``***``.

    The password is taken both from what follows the first ``:`` of the userinfo (see
    :func:`mask_url`) and from ``urlsplit``, which stops at an unencoded ``#``, ``/`` or
    ``?``, so a message quoting only the first part of such a password is masked as well.
    """
    if not url:
        return text
    text = text.replace(url, mask_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


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


def parse_url(url: str, *, cluster: bool = False) -> tuple[str, bool]:
    """``url`` as redis-py expects it and whether it names a Redis Cluster.

    ``redis+cluster://`` and ``rediss+cluster://`` become ``redis://``/``rediss://`` with the
    cluster flag set; ``cluster`` (config) marks a plain URL as a cluster seed node. Shared
    by the batch and the API so both accept exactly the same URLs.

    Raises
    ------
    ConfigError
        The URL's scheme is not one we know (the message masks any password).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _CLUSTER_SCHEMES:
        return _CLUSTER_SCHEMES[scheme] + url[len(scheme) :], True
    if scheme in _PLAIN_SCHEMES:
        return url, cluster
    msg = (
        f"unsupported Redis URL scheme {scheme or '(none)'!r} in {mask_url(url)}: "
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
            raise PublishError(msg) from exc
    raise AssertionError  # pragma: no cover - the loop returns or raises
