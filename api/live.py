"""What the API caches about the live version and the A/B experiment, and Redis failures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from redis.exceptions import RedisError

from api import metrics
from api.errors import Unavailable
from recsys_batch.publish import keys

log = logging.getLogger(__name__)

REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
META_FIELDS = ("format", "state", "generated_at", "created_at", "buckets")


@dataclass(frozen=True, slots=True)
class LiveVersion:
    """What the service caches about the live version (all of it immutable per version)."""

    version: str
    format: int
    generated_at: str | None
    generated_ts: float | None
    popular: tuple[int, ...]
    buckets: int
    items_key: str
    wire_prefix: bytes = b""
    """``P:v:V:`` as bytes: the start of every bucket key of this version."""
    attributes: Mapping[int, Mapping[str, object]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )
    """The version's item attributes (``P:v:V:items``, immutable per version), read once
    when the version is loaded: the rule engine's departments, brands, categories, prices."""

    def key(self, user_id: int, family: str = "u") -> str:
        """The bucket hash of ``user_id`` in this version (``u`` head, ``t`` tail, ``r``)."""
        return self.prefix + family + ":" + str(keys.bucket_of(user_id, self.buckets))

    @property
    def prefix(self) -> str:
        """``P:v:V:``: the common prefix of this version's keys."""
        return self.items_key[: -len("items")]

    def age_seconds(self, now: float | None = None) -> float | None:
        """Seconds since the version was generated (None when unknown)."""
        if self.generated_ts is None:
            return None
        return (time.time() if now is None else now) - self.generated_ts


def text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def redis_down(exc: BaseException) -> Unavailable:
    """Count a failed Redis command and turn it into a 503 answer."""
    metrics.REDIS_ERRORS.inc()
    detail = f"Redis did not answer: {type(exc).__name__}"
    log.warning("redis error: %s: %s", type(exc).__name__, exc)
    return Unavailable("redis_unavailable", detail)


@dataclass(frozen=True, slots=True)
class Failed:
    """What a lookup resolves to when its pipeline (or building its answer) failed."""

    error: BaseException


EXPERIMENT_FIELDS = ("version", "share")


def experiment_state(raw: Any) -> tuple[str | None, str | None]:
    """``(version, share)`` of an ``HMGET P:ab version share`` reply, as text."""
    version, share = raw if raw else (None, None)
    return text(version), text(share)


@dataclass(frozen=True, slots=True)
class Experiment:
    """A running A/B experiment: its version (cached like the live one) and share."""

    live: LiveVersion
    share: float


def loaded_version(
    version: str, prefix: str, meta_values: Any, popular_raw: Any, items_raw: Any
) -> LiveVersion:
    """The cached facts of ``version`` from its meta fields (``META_FIELDS``), popular list
    and items hash as read; :class:`Unavailable` when it cannot be served."""
    meta_key = keys.meta_key(version, prefix)
    meta = dict(zip(META_FIELDS, (text(v) for v in meta_values), strict=True))
    fmt = meta["format"]
    if fmt is None:
        detail = (
            f"live version {version} has no meta hash {meta_key} (expired or removed; "
            "fix: publish again or `recsys rollback`)"
        )
        raise Unavailable("version_incomplete", detail)
    supported = ", ".join(str(f) for f in sorted(keys.SUPPORTED_FORMATS))
    if not fmt.isdigit() or int(fmt) not in keys.SUPPORTED_FORMATS:
        detail = (
            f"live version {version} is in format {fmt[:40]!r} ({meta_key}); this API "
            f"reads format {supported} (fix: deploy the API that matches the batch, or "
            "`recsys rollback`)"
        )
        raise Unavailable("unsupported_format", detail)
    if meta["state"] != keys.STATE_COMPLETE:
        detail = f"live version {version} is in state {meta['state']!r}, not complete"
        raise Unavailable("version_incomplete", detail)
    try:
        popular = tuple(keys.decode_items(popular_raw))
    except ValueError:
        detail = f"{keys.popular_key(version, prefix)} is not a comma-separated list of item ids"
        raise Unavailable("corrupt_value", detail) from None
    generated_at = meta["generated_at"] or meta["created_at"]
    return LiveVersion(
        version=version,
        format=int(fmt),
        generated_at=generated_at,
        generated_ts=timestamp(generated_at),
        popular=popular,
        buckets=max(1, int(meta["buckets"] or 1)),
        items_key=keys.items_key(version, prefix),
        wire_prefix=keys.version_prefix(version, prefix).encode(),
        attributes=decode_attributes(items_raw or {}),
    )


def decode_attributes(raw: Any) -> dict[int, dict[str, Any]]:
    """An ``HGETALL P:v:V:items`` reply as item id -> attributes (unreadable entries are
    left out: such an item has no attributes, as in ``details=true``)."""
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    found: dict[int, dict[str, Any]] = {}
    for item, value in pairs:
        try:
            attrs = orjson.loads(value)
            found[int(item)] = attrs if isinstance(attrs, dict) else {}
        except (orjson.JSONDecodeError, ValueError):
            continue
    return found


async def item_details(
    client: Any, live: LiveVersion, item_ids: list[int]
) -> dict[int, dict[str, Any]]:
    """Attributes of items (department, brand, ...) published with ``live`` (one HMGET).

    Items the version has no attributes for map to ``{}``.
    """
    unique = list(dict.fromkeys(item_ids))
    if not unique:
        return {}
    try:
        values = await client.hmget(live.items_key, [str(i) for i in unique])
    except REDIS_FAILURES as exc:
        raise redis_down(exc) from None
    found: dict[int, dict[str, Any]] = {}
    for item, raw in zip(unique, values, strict=True):
        attrs: Any = {}
        if raw is not None:
            try:
                attrs = orjson.loads(raw)
            except orjson.JSONDecodeError:
                attrs = {}
        found[item] = attrs if isinstance(attrs, dict) else {}
    return found
