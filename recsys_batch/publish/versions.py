"""The lifecycle of a published version; the only module that begins, verifies, flips or
removes one. The layout is :mod:`recsys_batch.publish.keys` (docs/redis-format.md).

1. :func:`begin_version` removes versions left half-written by a crashed run (neither live
   nor previous), registers the new one in ``P:versions`` and writes its meta hash in state
   ``writing``;
2. the shards write their users (:func:`recsys_batch.publish.writer.write_users`);
3. :func:`finish_version` writes the popular list and the item attributes, then
   :func:`verify_version` checks the whole version: the fields of every bucket hash of every
   family (``u``, ``t``, ``r``) against the writers' own counts (:class:`writer.Written`,
   summed over the shards), the popular list's bytes, the meta hash's bucket count and every
   item field; any difference raises :class:`~recsys_batch.errors.PublishError` and the old
   version keeps serving;
4. the meta hash is marked ``complete`` and only then :func:`flip_pointer` moves
   ``P:current`` (and ``P:previous``) in one MULTI/EXEC. On a Redis Cluster the two pointers
   live in different slots, so the flip is ``SET current`` then ``SET previous``: readers
   only read ``current``, which changes in one command;
5. every version but the live and the previous one is unlinked (``UNLINK``: freed in a
   background thread).

A failed run calls :func:`abandon_version`: one attempt, no retries (Redis may be the
reason the run failed), and what it cannot remove the next run's step 1 removes. Every key
of a version carries the safety TTL, so an abandoned version also expires by itself.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import redis
from redis.typing import EncodableT, FieldT

from recsys_batch.config import RedisConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import PublishError, RecsysError
from recsys_batch.publish import keys
from recsys_batch.publish.status import (
    all_versions,
    experiment_version,
    live_version,
    previous_version,
    text,
    version_info,
)
from recsys_batch.publish.store import Client, is_cluster, with_retries
from recsys_batch.publish.writer import BUCKETS_FIELD, Written, chunks, ttl_seconds

# A Redis hash as redis-py types it (its ``mapping`` parameter is invariant in the key type).
HashFields = dict[FieldT, EncodableT]

log = logging.getLogger(__name__)


def new_version_id(now: datetime | None = None) -> str:
    """A sortable, unique version id such as ``20261128T031500Z-5f3a``."""
    now = now or datetime.now(UTC)
    return keys.check_version(f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}")


def encode_meta(meta: Mapping[str, Any]) -> HashFields:
    """Hash fields as strings: nested values become JSON."""
    encoded: HashFields = {}
    for name, value in meta.items():
        if value is None:
            continue
        if isinstance(value, str):
            encoded[name] = value
        elif isinstance(value, bool | int | float):
            encoded[name] = json.dumps(value)
        else:
            encoded[name] = json.dumps(value, default=str, sort_keys=True)
    return encoded


def version_keys(client: Client, version: str, cfg: RedisConfig) -> list[str] | None:
    """Every key ``version`` can hold, built from its meta hash; None when that is gone.

    A version of ``buckets`` buckets holds at most ``3 * buckets`` bucket hashes (``u``, ``t``
    and ``r``) plus ``popular``, ``items`` and ``meta``: no keyspace SCAN is needed.
    """
    raw = with_retries(
        lambda: client.hget(keys.meta_key(version, cfg.key_prefix), BUCKETS_FIELD),
        cfg,
        "cleanup",
    )
    if raw is None:
        return None
    prefix = cfg.key_prefix
    names = [
        keys.user_bucket_key(version, bucket, prefix, family)
        for family in keys.USER_FAMILIES
        for bucket in range(int(raw))
    ]
    return [
        *names,
        keys.popular_key(version, prefix),
        keys.items_key(version, prefix),
        keys.meta_key(version, prefix),
    ]


def unlink_version(client: Client, version: str, cfg: RedisConfig) -> int:
    """Remove every key of ``version`` with ``UNLINK`` (non-blocking).

    The keys are built from the version's bucket count (:func:`version_keys`); a keyspace
    ``SCAN MATCH P:v:V:*`` runs only when the meta hash is gone (or holds no bucket count:
    a run that failed before any user was written).

    Returns
    -------
    int
        Keys removed.
    """
    known = version_keys(client, version, cfg)
    pattern = keys.version_prefix(version, cfg.key_prefix) + "*"

    def remove() -> int:
        removed = 0
        names = (
            known if known is not None else client.scan_iter(match=pattern, count=cfg.chunk_size)
        )
        batch: list[Any] = []
        for name in names:
            batch.append(name)
            if len(batch) >= cfg.chunk_size:
                removed += _unlink(client, batch)
                batch = []
        if batch:
            removed += _unlink(client, batch)
        client.zrem(keys.versions_key(cfg.key_prefix), version)
        return removed

    return with_retries(remove, cfg, f"cleanup of version {version}")


def _unlink(client: Client, names: list[Any]) -> int:
    """``UNLINK`` of ``names`` (one command; on a cluster one per key, pipelined by node)."""
    if not is_cluster(client):
        return int(client.unlink(*names))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.unlink(name)
    return int(sum(pipe.execute()))


def cleanup_versions(client: Client, cfg: RedisConfig, keep: set[str | None]) -> list[str]:
    """Unlink every registered version not in ``keep`` (half-written ones included).

    The version an A/B experiment serves (``P:ab``, ``recsys ab start``) is always kept.
    """
    keep = keep | {experiment_version(client, cfg)}
    removed = []
    for version in all_versions(client, cfg):
        if version in keep:
            continue
        unlink_version(client, version, cfg)
        log.info("removed version %s", version)
        removed.append(version)
    return removed


def flip_pointer(client: Client, version: str, cfg: RedisConfig) -> str | None:
    """Point ``current`` at ``version`` and ``previous`` at the old current; return the old."""
    current = keys.current_key(cfg.key_prefix)
    previous = keys.previous_key(cfg.key_prefix)

    def flip() -> str | None:
        if is_cluster(client):
            # Different slots: SET current first (the only key readers use), then previous.
            old = text(client.get(current))
            client.set(current, version)
            if old and old != version:
                client.set(previous, old)
            return old
        with client.pipeline(transaction=True) as pipe:
            pipe.watch(current)
            old = text(pipe.get(current))
            pipe.multi()
            pipe.set(current, version)
            if old and old != version:
                pipe.set(previous, old)
            pipe.execute()
            return old

    try:
        return with_retries(flip, cfg, "pointer flip")
    except PublishError as exc:
        if isinstance(exc.__cause__, redis.WatchError):
            msg = "another process changed the live version during the flip; nothing flipped"
            raise PublishError(msg) from exc
        raise


def items_mapping(items_attrs: pl.DataFrame | None) -> HashFields:
    if items_attrs is None or items_attrs.height == 0:
        return {}
    attributes = [c for c in items_attrs.columns if c != C.ITEM]
    return {
        str(row[C.ITEM]): json.dumps({a: row[a] for a in attributes}, sort_keys=True)
        for row in items_attrs.iter_rows(named=True)
    }


def rollback(client: Client, cfg: RedisConfig) -> tuple[str, str]:
    """Make the previous version live again (swap current and previous).

    The restored version's keys get a fresh safety TTL, so it does not expire soon after.

    Returns
    -------
    tuple[str, str]
        (restored version, version that was live).

    Raises
    ------
    PublishError
        There is no previous version, or its keys are gone (expired or removed).
    """
    live = live_version(client, cfg)
    target = previous_version(client, cfg)
    if not target or target == live:
        msg = "nothing to roll back to: no previous version is recorded"
        raise PublishError(msg)
    info = version_info(client, target, cfg)
    if info.state != keys.STATE_COMPLETE:
        msg = f"cannot roll back to {target}: its keys expired or were removed"
        raise PublishError(msg)
    refresh_ttl(client, target, cfg, "rollback TTL refresh")
    old = flip_pointer(client, target, cfg)
    log.info("rolled back: live version %s (was %s)", target, old)
    return target, old or ""


def refresh_ttl(client: Client, version: str, cfg: RedisConfig, what: str) -> None:
    """Give every key of ``version`` the full safety TTL again (rollback, ``recsys ab start``)."""
    ttl = ttl_seconds(cfg)
    known = version_keys(client, version, cfg)
    pattern = keys.version_prefix(version, cfg.key_prefix) + "*"

    def refresh() -> None:
        names = (
            known if known is not None else client.scan_iter(match=pattern, count=cfg.chunk_size)
        )
        pipe = client.pipeline(transaction=False)
        for n, name in enumerate(names, start=1):
            pipe.expire(name, ttl)
            if n % cfg.chunk_size == 0:
                pipe.execute()
                pipe = client.pipeline(transaction=False)
        pipe.execute()

    with_retries(refresh, cfg, what)


def begin_version(client: Client, meta: Mapping[str, Any], cfg: RedisConfig) -> str:
    """Remove stale versions and register a new one in state ``writing``; return its id.

    ``meta`` holds the run's fields of the meta hash (run id, data range, metrics, ...);
    nested values are stored as JSON.
    """
    version = new_version_id()
    stale = cleanup_versions(
        client, cfg, keep={live_version(client, cfg), previous_version(client, cfg)}
    )
    if stale:
        log.info("removed %d stale version(s) before writing: %s", len(stale), ", ".join(stale))
    meta_key = keys.meta_key(version, cfg.key_prefix)
    ttl = ttl_seconds(cfg)
    header = encode_meta(
        {
            **meta,
            "format": keys.FORMAT,
            "state": keys.STATE_WRITING,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "ttl_seconds": ttl,
        }
    )

    def start() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.zadd(keys.versions_key(cfg.key_prefix), {version: time.time()})
        pipe.hset(meta_key, mapping=header)
        pipe.expire(meta_key, ttl)
        pipe.execute()

    with_retries(start, cfg, "version start")
    return version


def abandon_version(client: Client, version: str, cfg: RedisConfig) -> None:
    """Best effort, one attempt: remove a version whose run failed (the next run retries)."""
    try:
        unlink_version(client, version, cfg.model_copy(update={"retries": 0}))
    except RecsysError as exc:
        log.warning("could not remove the unfinished version %s now: %s", version, exc)


def bucket_fields(client: Client, version: str, family: str, cfg: RedisConfig) -> np.ndarray:
    """Fields (``HLEN``) of every ``family`` bucket hash of ``version``, one per bucket."""
    raw = with_retries(
        lambda: client.hget(keys.meta_key(version, cfg.key_prefix), BUCKETS_FIELD),
        cfg,
        "verification",
    )
    buckets = int(raw or 0)
    found = np.zeros(buckets, dtype=np.int64)
    for start, length in chunks(buckets, cfg.chunk_size):

        def count(start: int = start, length: int = length) -> list[int]:
            pipe = client.pipeline(transaction=False)
            for bucket in range(start, start + length):
                pipe.hlen(keys.user_bucket_key(version, bucket, cfg.key_prefix, family))
            return [int(n) for n in pipe.execute()]

        found[start : start + length] = with_retries(count, cfg, "verification")
    return found


def _family_shortfalls(
    client: Client, version: str, written: Written, cfg: RedisConfig
) -> list[str]:
    """One line per family whose bucket hashes differ from what the writers stored."""
    problems = []
    for family in sorted(set(keys.USER_FAMILIES) | set(written.fields)):
        found = bucket_fields(client, version, family, cfg)
        expected = written.per_bucket(family)
        if found.shape != expected.shape:
            problems.append(
                f"{family!r}: {found.size} buckets recorded in the meta hash, "
                f"{expected.size} written"
            )
        elif (off := int(np.count_nonzero(found != expected))) > 0:
            problems.append(
                f"{family!r}: {int(found.sum())} of {int(expected.sum())} fields "
                f"({off} bucket(s) differ)"
            )
    return problems


def verify_version(
    client: Client,
    version: str,
    written: Written,
    popular: list[int],
    items: int,
    cfg: RedisConfig,
) -> None:
    """Check the whole of ``version`` before it may go live.

    Every bucket hash of every family (``keys.USER_FAMILIES``: head items, tail items,
    reasons) must hold exactly the fields the writers stored in it (``written``: the sum of
    every shard's :class:`~recsys_batch.publish.writer.Written`; ``HLEN`` per bucket); the
    meta hash must record the writers' bucket count, the popular list must be the bytes
    written and the item attributes must have ``items`` fields (``HLEN``).

    Raises
    ------
    PublishError
        Any family, bucket, key or item field differs (evicted? check maxmemory-policy);
        nothing flipped.
    """
    prefix = cfg.key_prefix
    problems = _family_shortfalls(client, version, written, cfg)
    stored_popular = with_retries(
        lambda: client.get(keys.popular_key(version, prefix)), cfg, "verification"
    )
    if text(stored_popular) != keys.encode_items(popular):
        problems.append("the popular list differs from the one written (or is missing)")
    item_key = keys.items_key(version, prefix)
    found_items = int(with_retries(lambda: client.hlen(item_key), cfg, "verification"))
    if found_items != items:
        problems.append(f"{found_items} of {items} item fields")
    if problems:
        msg = (
            f"verification failed for version {version}: {'; '.join(problems)} "
            "(evicted? check maxmemory-policy); the live version was left untouched"
        )
        raise PublishError(msg)


def finish_version(
    client: Client,
    version: str,
    written: Written,
    popular: list[int],
    items_attrs: pl.DataFrame | None,
    cfg: RedisConfig,
) -> str | None:
    """Popular list and item attributes, :func:`verify_version`, then the one pointer flip.

    Parameters
    ----------
    written
        What the writers stored (every shard's :func:`~recsys_batch.publish.writer.write_users`
        result, summed): the version is verified against it.
    popular
        Fallback items for unknown users, best first.
    items_attrs
        Item attributes (``item_id`` + attribute columns), stored as JSON per item.

    Returns
    -------
    str or None
        The version that was live before.

    Raises
    ------
    PublishError
        Redis failed, or a key is missing after writing; nothing flipped.
    """
    prefix = cfg.key_prefix
    ttl = ttl_seconds(cfg)
    items = items_mapping(items_attrs)

    def extras() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.set(keys.popular_key(version, prefix), keys.encode_items(popular), ex=ttl)
        if items:
            pipe.hset(keys.items_key(version, prefix), mapping=items)
            pipe.expire(keys.items_key(version, prefix), ttl)
        pipe.execute()

    with_retries(extras, cfg, "popular/items write")
    verify_version(client, version, written, popular, len(items), cfg)
    finished: HashFields = {
        "state": keys.STATE_COMPLETE,
        "users": str(written.users),
        "items": str(len(items)),
        "popular": str(len(popular)),
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    meta_key = keys.meta_key(version, prefix)
    with_retries(lambda: client.hset(meta_key, mapping=finished), cfg, "meta update")
    old = flip_pointer(client, version, cfg)
    try:
        cleanup_versions(client, cfg, keep={version, old})
    except PublishError as exc:  # the flip succeeded; leftovers expire or go next run
        log.warning("cleanup after publish failed: %s", exc)
    return old
