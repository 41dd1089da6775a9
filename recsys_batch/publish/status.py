"""Read the published versions: the live pointer, the previous one, their meta hashes.

Read-only; the lifecycle that writes them is :mod:`recsys_batch.publish.versions`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recsys_batch.config import RedisConfig
from recsys_batch.publish import keys
from recsys_batch.publish.store import Client, with_retries


@dataclass(frozen=True)
class VersionInfo:
    """What ``recsys status`` shows about one version."""

    version: str
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> str | None:
        """``writing`` or ``complete`` (None when the meta hash is gone)."""
        return self.meta.get("state")

    @property
    def users(self) -> int:
        """Users published in this version."""
        return int(self.meta.get("users", "0") or 0)

    @property
    def metrics(self) -> dict[str, Any]:
        """Quality metrics recorded by the run (decoded JSON; {} when absent)."""
        raw = self.meta.get("metrics")
        if not raw:
            return {}
        try:
            decoded = json.loads(raw)
        except ValueError:
            return {}
        return decoded if isinstance(decoded, dict) else {}


def _decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def live_version(client: Client, cfg: RedisConfig) -> str | None:
    """The version ``P:current`` names, or None before the first publish."""
    return text(with_retries(lambda: client.get(keys.current_key(cfg.key_prefix)), cfg, "read"))


def previous_version(client: Client, cfg: RedisConfig) -> str | None:
    """The version ``P:previous`` names (the rollback target), or None."""
    return text(with_retries(lambda: client.get(keys.previous_key(cfg.key_prefix)), cfg, "read"))


def version_info(client: Client, version: str, cfg: RedisConfig) -> VersionInfo:
    """The decoded meta hash of ``version`` (empty when it expired or was removed)."""
    raw = with_retries(lambda: client.hgetall(keys.meta_key(version, cfg.key_prefix)), cfg, "read")
    return VersionInfo(version, _decode_hash(raw or {}))


def all_versions(client: Client, cfg: RedisConfig) -> list[str]:
    """Every version registered in ``P:versions``, oldest first."""
    raw = with_retries(lambda: client.zrange(keys.versions_key(cfg.key_prefix), 0, -1), cfg, "read")
    return [v for v in (text(x) for x in raw) if v]


def publish_status(client: Client, cfg: RedisConfig) -> dict[str, Any]:
    """Live and previous versions with their meta, for ``recsys status``."""
    live = live_version(client, cfg)
    previous = previous_version(client, cfg)
    result: dict[str, Any] = {"live": None, "previous": None}
    for name, version in (("live", live), ("previous", previous)):
        if version:
            info = version_info(client, version, cfg)
            result[name] = {
                "version": version,
                "state": info.state,
                "users": info.users,
                "metrics": info.metrics,
                "meta": info.meta,
            }
    return result


def experiment(client: Client, cfg: RedisConfig) -> dict[str, str] | None:
    """The running A/B experiment (``P:ab``: version, share, started_at), or None."""
    raw = with_retries(lambda: client.hgetall(keys.experiment_key(cfg.key_prefix)), cfg, "read")
    found = _decode_hash(raw)
    return found if found.get("version") else None


def experiment_version(client: Client, cfg: RedisConfig) -> str | None:
    """The version the running A/B experiment serves, or None."""
    found = experiment(client, cfg)
    return found["version"] if found else None


def version_buckets(client: Client, version: str, cfg: RedisConfig) -> int:
    """The bucket count of ``version`` (its meta ``buckets``; 0 when unknown)."""
    raw = with_retries(
        lambda: client.hget(keys.meta_key(version, cfg.key_prefix), "buckets"), cfg, "read"
    )
    return int(text(raw) or 0)


def _user_fields(
    client: Client, version: str, user_ids: list[int], families: tuple[str, str], cfg: RedisConfig
) -> list[tuple[int, Any, Any]]:
    """``(user, first, second)``: each user's fields of two bucket families, one pipeline."""
    buckets = version_buckets(client, version, cfg)
    if not buckets or not user_ids:
        return []

    def read() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for user in user_ids:
            bucket = keys.bucket_of(user, buckets)
            for family in families:
                pipe.hget(keys.user_bucket_key(version, bucket, cfg.key_prefix, family), str(user))
        return list(pipe.execute())

    values = with_retries(read, cfg, "read")
    return list(zip(user_ids, values[::2], values[1::2], strict=True))


def user_items(
    client: Client, version: str, user_ids: list[int], cfg: RedisConfig
) -> dict[int, list[int]]:
    """The stored items of each known user of ``version``, best first (unknown users left out).

    For debugging, tests and ``recsys status``: reads the head and tail bucket hashes.
    """
    fields = _user_fields(client, version, user_ids, ("u", "t"), cfg)
    return {user: keys.unpack_items(head, tail) for user, head, tail in fields if head is not None}


def user_new_items(
    client: Client, version: str, user_ids: list[int], cfg: RedisConfig
) -> dict[int, list[tuple[int, str]]]:
    """Each user's stored new items (never bought, #26) with their reason codes, best first;
    users without a new-items list are left out."""
    fields = _user_fields(client, version, user_ids, ("n", "w"), cfg)
    return {
        user: [
            (item, str(why["code"]))
            for item, why in zip(keys.unpack_items(new), keys.decode_reasons(reasons), strict=True)
        ]
        for user, new, reasons in fields
        if new is not None
    }


def version_user_ids(client: Client, version: str, cfg: RedisConfig) -> list[int]:
    """Every user id stored in ``version`` (``HKEYS`` of each head bucket), sorted."""
    buckets = version_buckets(client, version, cfg)

    def read() -> list[int]:
        pipe = client.pipeline(transaction=False)
        for bucket in range(buckets):
            pipe.hkeys(keys.user_bucket_key(version, bucket, cfg.key_prefix))
        return sorted(int(name) for names in pipe.execute() for name in names)

    return with_retries(read, cfg, "read")
