"""Put known lists live in Redis the way ``recsys nightly-batch`` does, for API tests.

An API test that needs known recommendations in Redis publishes them with
:func:`publish_users` (lists given per user) or :func:`publish_lists` (a recommendations
frame), so what the API reads was written by the batch's own writer and version lifecycle,
not by a hand-made copy of the key format (#29): ``keys.py`` and ``writer.py`` own the layout,
and only the golden-byte tests of ``keys.py`` spell it out. A test that needs a state the
writer never produces (an unknown format, a corrupt value) publishes through here and then
damages exactly that one piece. The benchmarks that need a live version use it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from recsys_batch.config import RedisConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import PublishError
from recsys_batch.publish import versions, writer
from recsys_batch.publish.store import Client
from recsys_batch.publish.writer import REASON


def publish_lists(
    client: Client,
    recs: pl.DataFrame,
    popular: list[int],
    items_attrs: pl.DataFrame | None,
    cfg: RedisConfig,
    meta: dict[str, Any] | None = None,
    new_items: pl.DataFrame | None = None,
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
    new_items
        Each user's new-items list (``writer.write_users``' ``new_items``: ``user_id``,
        ``item_id``, ``rank``, ``reason``), or None for no ``n``/``w`` families.

    Returns
    -------
    str
        The version now live.
    """
    version = versions.begin_version(client, meta or {}, cfg)
    try:
        users = recs[C.USER].unique().sort()
        written = writer.write_users(client, version, recs, cfg, new_items)
        if written.users != users.len():
            msg = f"{written.users} of {users.len()} user keys verified after writing"
            raise PublishError(msg)
        versions.finish_version(client, version, written, popular, items_attrs, cfg)
    except BaseException:
        versions.abandon_version(client, version, cfg)
        raise
    return version


def recommendations(
    users: Mapping[int, Sequence[int]], reasons: Mapping[int, Sequence[str]] | None = None
) -> pl.DataFrame:
    """Each user's items, best first, as the schema ``columns.RECOMMENDATIONS`` (+ ``reason``).

    ``reasons`` (``r9.12``, ``b``, ``a``, ``t``, ``p``: one per item, as the ranker writes
    them) must name every user, with one reason per item.
    """
    rows = [
        (user, item, rank) for user, items in users.items() for rank, item in enumerate(items, 1)
    ]
    recs = pl.DataFrame(
        {
            C.USER: [user for user, _, _ in rows],
            C.ITEM: [item for _, item, _ in rows],
            C.RANK: [rank for _, _, rank in rows],
            C.SCORE: [1.0 / rank for _, _, rank in rows],
        },
        schema=C.RECOMMENDATIONS,
    )
    if reasons is None:
        return recs
    for user, items in users.items():
        if len(reasons[user]) != len(items):
            msg = f"user {user}: {len(reasons[user])} reasons for {len(items)} items"
            raise ValueError(msg)
    why = [reasons[user][rank - 1] for user, _, rank in rows]
    return recs.with_columns(pl.Series(REASON, why, dtype=pl.String))


def new_items_frame(new_items: Mapping[int, Sequence[tuple[int, str]]]) -> pl.DataFrame:
    """Each user's ``(item, reason)`` new items, best first, as ``write_users`` takes them
    (reasons: keys of ``writer.NEW_REASON_VALUES``, e.g. ``promoted``, ``category``)."""
    rows = [
        (user, item, rank, why)
        for user, found in new_items.items()
        for rank, (item, why) in enumerate(found, 1)
    ]
    return pl.DataFrame(
        rows,
        schema={C.USER: pl.Int64, C.ITEM: pl.Int64, C.RANK: pl.Int32, REASON: pl.String},
        orient="row",
    )


def publish_users(
    client: Client,
    users: Mapping[int, Sequence[int]],
    popular: list[int],
    cfg: RedisConfig,
    *,
    reasons: Mapping[int, Sequence[str]] | None = None,
    items: Mapping[int, Mapping[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
    finish: bool = True,
    new_items: Mapping[int, Sequence[tuple[int, str]]] | None = None,
) -> str:
    """Publish each user's ``users[user]`` items (best first) as one new live version.

    The lists go through :func:`publish_lists` (begin, ``write_users``, finish: verify, flip,
    cleanup), with ``cfg.user_buckets`` buckets when set.

    Parameters
    ----------
    reasons
        One reason per item of every user (``?explain=true``), or None for no ``r`` family.
    items
        Item id -> attributes (``details=true``); every item gets every attribute named by
        any item (null where it has none), as the batch's item frame does.
    meta
        Extra fields of the version's meta hash (run id, metrics, ...).
    new_items
        Each user's new-items list as ``(item, reason)``, best first (users of ``users``
        only), or None for no ``n``/``w`` families.
    finish
        False stops after ``write_users``: the version stays in state ``writing`` and
        ``P:current`` is not touched, as while a nightly run is still writing.

    Returns
    -------
    str
        The version id (live unless ``finish`` is False).
    """
    recs = recommendations(users, reasons)
    new = None if new_items is None else new_items_frame(new_items)
    if not finish:
        version = versions.begin_version(client, meta or {}, cfg)
        writer.write_users(client, version, recs, cfg, new)
        return version
    attrs = None
    if items:
        attrs = pl.DataFrame([{C.ITEM: item, **values} for item, values in items.items()])
    return publish_lists(client, recs, popular, attrs, cfg, meta, new)
