"""Put known lists live in Redis the way ``recsys nightly-batch`` does, for API tests.

An API test that needs known recommendations in Redis publishes them with
:func:`publish_lists`, so what the API reads was written by the batch's own writer and version
lifecycle, not by a hand-made copy of the key format. The benchmarks that need a live version
use it too.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from recsys_batch.config import RedisConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys, versions, writer
from recsys_batch.publish.store import Client


def publish_lists(
    client: Client,
    recs: pl.DataFrame,
    popular: list[int],
    items_attrs: pl.DataFrame | None,
    cfg: RedisConfig,
    meta: dict[str, Any] | None = None,
) -> str:
    """Publish ``recs`` as one new live version, as a one-shard nightly run does.

    :func:`~recsys_batch.publish.versions.begin_version`, then
    :func:`~recsys_batch.publish.writer.write_users` (its count of written keys is checked, as
    each shard's is), then :func:`~recsys_batch.publish.versions.finish_version` (verify, flip,
    cleanup). On any error the version is abandoned and the error re-raised.

    Parameters
    ----------
    recs
        Schema ``columns.RECOMMENDATIONS``: each user's list, rank 1 = best.
    popular
        The fallback list for unknown users, best first.
    items_attrs
        ``item_id`` + attribute columns (``details=true``), or None.
    meta
        Extra fields of the version's meta hash (run id, metrics, ...).

    Returns
    -------
    str
        The version now live.
    """
    version = versions.begin_version(client, meta or {}, cfg)
    try:
        users = recs[C.USER].unique().sort()
        written = writer.write_users(client, version, recs, cfg)
        if written.users != users.len():
            msg = f"{written.users} of {users.len()} user keys verified after writing"
            raise PublishError(msg)
        versions.finish_version(client, version, written, popular, items_attrs, cfg)
    except BaseException:
        versions.abandon_version(client, version, cfg)
        raise
    return version


def write_version(
    client: Any,
    prefix: str,
    version: str,
    users: dict[int, list[int]],
    popular: list[int],
    *,
    items: dict[int, str] | None = None,
    reasons: dict[int, list[str]] | None = None,
    buckets: int = 4,
    flip: bool = True,
    created_at: str = "2026-11-28T03:00:00+00:00",
) -> None:
    """Write a complete version by hand in the ``keys`` format 2 layout (and flip to it).

    For API tests that need exact lists (or a layout the writer would refuse) without a
    version lifecycle: meta (``format``, ``state``, ``buckets``), ``popular``, each user's
    packed head (and tail past ``keys.ITEMS_PER_FIELD`` items) and reasons.
    """
    pipe = client.pipeline(transaction=False)
    meta = {
        "format": str(keys.FORMAT),
        "state": keys.STATE_COMPLETE,
        "created_at": created_at,
        "buckets": buckets,
    }
    pipe.hset(keys.meta_key(version, prefix), mapping=meta)
    pipe.set(keys.popular_key(version, prefix), keys.encode_items(popular))
    head_n = keys.ITEMS_PER_FIELD
    for user, recs in users.items():
        bucket = keys.bucket_of(user, buckets)
        head = keys.user_bucket_key(version, bucket, prefix)
        pipe.hset(head, str(user), keys.pack_items(recs[:head_n]))
        if recs[head_n:]:
            tail = keys.user_bucket_key(version, bucket, prefix, "t")
            pipe.hset(tail, str(user), keys.pack_items(recs[head_n:]))
        if reasons and user in reasons:
            why = keys.user_bucket_key(version, bucket, prefix, "r")
            pipe.hset(why, str(user), keys.encode_reasons(reasons[user]))
    if items:
        pipe.hset(keys.items_key(version, prefix), mapping={str(i): v for i, v in items.items()})
    if flip:
        pipe.set(keys.current_key(prefix), version)
    pipe.execute()
