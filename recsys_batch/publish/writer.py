"""Write one shard's recommendations into a version: the one writer of a version's users.

:func:`write_users` is called once per shard by the nightly run (an in-memory run is one
shard). Format 2 (:mod:`keys`): every user is one field of a bucket hash
``P:v:V:u:{bucket}`` (field = decimal user id, value = the first 16 items packed 4 bytes
each), items 17..N go to ``P:v:V:t:{bucket}`` and, when ``recs`` carries a ``reason`` column,
the reasons to ``P:v:V:r:{bucket}``. Every bucket key gets the version's safety TTL.

Commands are ordinary redis-py ones: ``HSET key f1 v1 f2 v2 ...`` (one per bucket touched in a
chunk of ``cfg.chunk_size`` users) and ``EXPIRE``, sent through ``pipeline(transaction=False)``
(on a Redis Cluster redis-py's cluster pipeline groups them by node), so TLS, ACL users and
clusters need nothing of their own here. A failed round trip is retried with backoff
(:func:`store.with_retries`); ``HSET`` is idempotent, so resending an applied chunk is harmless.
Every family's fields of the shard are then counted back (``HMGET`` per bucket), so a lost
write fails the shard instead of the night at the end. :func:`write_users` returns
:class:`Written`, the fields it stored per family and bucket; the run adds up every shard's
and :func:`recsys_batch.publish.versions.verify_version` checks the version against that sum,
bucket by bucket and family by family, before the flip.

The number of buckets is fixed per version in its meta hash (field ``buckets``): the first
writer sets it (``HSETNX``) from ``cfg.user_buckets`` (set by the run from the expected
number of users), or from the users it writes when that is 0; every later writer reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import polars as pl

from recsys_batch.config import RedisConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys
from recsys_batch.publish.store import Client, with_retries

REASON = "reason"
"""Optional column of ``recs``: the item's reason as text (``r9.12``, ``b``, ``a``, ``t``,
``p``; see ``keys.reason_value``), packed 2 bytes per item into the ``r`` bucket hashes."""
NEW_REASON_VALUES = {
    "similar_customers": 0,
    "bought_with": 1,
    "trending": 2,
    "popular": 3,
    "promoted": 4,
    "category": 5,
}
"""Reason texts of the new-items list (``new_items`` of :func:`write_users`) and their packed
values (``keys.REASON_CODES``; ALS reads "similar customers")."""
BUCKETS_FIELD = "buckets"
TOP_N_FIELD = "top_n"

_MASK = np.uint64((1 << 64) - 1)


def ttl_seconds(cfg: RedisConfig) -> int:
    """The safety TTL of every key of a version, in seconds."""
    return int(cfg.ttl_days * 86_400)


def chunks(height: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, length)`` of consecutive slices of ``size`` over ``height`` rows."""
    for start in range(0, height, max(1, size)):
        yield start, min(size, height - start)


def buckets_of(user_ids: np.ndarray, buckets: int) -> np.ndarray:
    """``keys.bucket_of`` of every id, vectorised (SplitMix64 with wrapping uint64 math)."""
    with np.errstate(over="ignore"):
        z = user_ids.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(32)) % np.uint64(buckets)).astype(np.int64)


@dataclass(frozen=True)
class PackedUsers:
    """One row per user, sorted by bucket: what :func:`write_users` sends."""

    user_ids: np.ndarray
    bucket: np.ndarray
    head: list[bytes]
    """Packed items 1..16 of each user."""
    tail: list[bytes]
    """Packed items 17..N (``b""`` for users with at most 16)."""
    reasons: list[bytes] | None
    """Packed reasons per user (``keys.encode_reasons``), when ``recs`` has a ``reason``
    column."""
    new: list[bytes] | None = None
    """Packed new items per user (``b""`` for a user without any), when a new-items list is
    written."""
    new_reasons: list[bytes] | None = None
    """Packed reasons of the new items, aligned with ``new``."""


@dataclass(frozen=True)
class Written:
    """Fields stored per family and bucket: what a version must hold, and nothing else.

    ``fields[family][b]`` is the number of fields the writers put into bucket hash ``b`` of
    ``family`` (``keys.USER_FAMILIES``). Shards write disjoint users, so the counts of a
    version are the sum (``+``) of its shards' counts.
    """

    buckets: int = 0
    fields: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def users(self) -> int:
        """Users stored (every user has exactly one ``u`` field)."""
        head = self.fields.get("u")
        return 0 if head is None else int(head.sum())

    def total(self, family: str) -> int:
        """Fields of ``family`` over every bucket."""
        counts = self.fields.get(family)
        return 0 if counts is None else int(counts.sum())

    def per_bucket(self, family: str) -> np.ndarray:
        """Fields of ``family`` in each bucket (zeros where none were written)."""
        counts = self.fields.get(family)
        return np.zeros(self.buckets, dtype=np.int64) if counts is None else counts

    def __add__(self, other: Written) -> Written:
        if not other.buckets:
            return self
        if not self.buckets:
            return other
        if self.buckets != other.buckets:
            msg = f"cannot add counts of {self.buckets} and {other.buckets} buckets"
            raise ValueError(msg)
        names = sorted(set(self.fields) | set(other.fields))
        summed = {f: self.per_bucket(f) + other.per_bucket(f) for f in names}
        return Written(self.buckets, summed)


def check_recommendations(recs: pl.DataFrame) -> None:
    """Refuse what cannot be stored, before anything is written.

    Raises
    ------
    ValueError
        A negative user id, an item id outside 0..2**32-1, more than ``keys.MAX_TOP_N`` items
        for a user, or a repeated (user, rank) pair.
    """
    if recs[C.USER].min() < 0:  # type: ignore[operator]
        msg = "recommendations contain a negative user_id; keys are built from ids >= 0 only"
        raise ValueError(msg)
    items_min, items_max = int(recs[C.ITEM].min()), int(recs[C.ITEM].max())  # type: ignore[arg-type]
    if items_min < 0 or items_max > keys.MAX_ITEM_ID:
        msg = f"item ids must be 0..{keys.MAX_ITEM_ID} to be packed; got {items_min}..{items_max}"
        raise ValueError(msg)
    if recs.select(pl.struct(C.USER, C.RANK).is_duplicated().any()).item():
        msg = "recommendations repeat a (user_id, rank) pair; expected ranks 1..k per user"
        raise ValueError(msg)
    longest = int(recs.group_by(C.USER).len()["len"].max())  # type: ignore[arg-type]
    if longest > keys.MAX_TOP_N:
        msg = f"a user has {longest} items; a version stores at most {keys.MAX_TOP_N}"
        raise ValueError(msg)


def packed_users(recs: pl.DataFrame, buckets: int) -> PackedUsers:
    """Each user's items packed (``keys.pack_items``), sorted by bucket then user.

    ``recs`` has the schema ``columns.RECOMMENDATIONS`` (user_id, item_id, rank 1..N,
    score), optionally a ``reason`` column, and passed :func:`check_recommendations`.
    """
    ordered = recs.sort(C.USER, C.RANK)
    users, starts, counts = (
        ordered.select(
            pl.col(C.USER).rle_id().alias("run"), pl.col(C.USER), pl.int_range(pl.len()).alias("i")
        )
        .group_by("run", maintain_order=True)
        .agg(pl.col(C.USER).first(), pl.col("i").first().alias("start"), pl.len().alias("n"))
        .select(C.USER, "start", "n")
        .get_columns()
    )
    blob = ordered[C.ITEM].to_numpy().astype(">u4").tobytes()
    width, per_field = keys.ITEM_BYTES, keys.ITEMS_PER_FIELD
    user_ids = users.to_numpy()
    bucket = buckets_of(user_ids, buckets)
    order = np.lexsort((user_ids, bucket))
    begin = starts.to_numpy()[order] * width
    end = begin + counts.to_numpy()[order] * width
    split = np.minimum(end, begin + per_field * width)
    head = [blob[a:b] for a, b in zip(begin.tolist(), split.tolist(), strict=True)]
    tail = [blob[a:b] for a, b in zip(split.tolist(), end.tolist(), strict=True)]
    reasons = None
    if REASON in recs.columns:
        packed = ordered.select(reason_values(pl.col(REASON)))[REASON].to_numpy()
        why = packed.astype(">u2").tobytes()
        # begin/end are offsets in the 4-byte item blob: the same rows, 2 bytes each here.
        lo, hi = begin * keys.REASON_BYTES // width, end * keys.REASON_BYTES // width
        reasons = [why[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
    return PackedUsers(user_ids[order], bucket[order], head, tail, reasons)


def reason_values(text: pl.Expr) -> pl.Expr:
    """``keys.reason_value`` of each reason text, vectorised (UInt16, named ``reason``)."""
    text = text.fill_null("a")
    parts = text.str.slice(1).str.split_exact(".", 1)

    def capped(field: str, top: int) -> pl.Expr:
        value = parts.struct.field(field).cast(pl.Int64, strict=False).fill_null(0)
        return value.clip(0, top)

    repeat = (
        0x8000
        + capped("field_0", keys.MAX_REASON_TIMES) * 512
        + capped("field_1", keys.MAX_REASON_DAYS)
    )
    head = text.str.slice(0, 1)
    return (
        pl.when(head == "r")
        .then(repeat)
        .when(head == "b")
        .then(1)
        .when(head == "t")
        .then(2)
        .when(head == "p")
        .then(3)
        .otherwise(0)
        .cast(pl.UInt16)
        .alias(REASON)
    )


def check_new_items(new_items: pl.DataFrame, recs: pl.DataFrame) -> None:
    """Refuse a new-items list that cannot be stored beside ``recs``.

    Raises
    ------
    ValueError
        A user without a main list (the lookup starts from it), more than
        ``keys.ITEMS_PER_FIELD`` new items for a user, an item id that cannot be packed, a
        repeated (user, rank), or a reason outside ``NEW_REASON_VALUES``.
    """
    if new_items.height == 0:
        return
    orphans = (
        new_items.select(C.USER).unique().join(recs.select(C.USER).unique(), on=C.USER, how="anti")
    )
    if orphans.height:
        example = orphans[C.USER][0]
        msg = f"{orphans.height} user(s) have new items but no main list, e.g. user {example}"
        raise ValueError(msg)
    check_recommendations(new_items)
    longest = int(new_items.group_by(C.USER).len()["len"].max())  # type: ignore[arg-type]
    if longest > keys.ITEMS_PER_FIELD:
        msg = f"a user has {longest} new items; a version stores at most {keys.ITEMS_PER_FIELD}"
        raise ValueError(msg)
    unknown = set(new_items[REASON].unique().to_list()) - set(NEW_REASON_VALUES)
    if unknown:
        expected = sorted(NEW_REASON_VALUES)
        msg = f"unknown new-item reason(s) {sorted(map(str, unknown))}; expected {expected}"
        raise ValueError(msg)


def packed_new_items(
    new_items: pl.DataFrame, user_ids: np.ndarray
) -> tuple[list[bytes], list[bytes]]:
    """Each of ``user_ids``' new items and their reasons, packed (``b""`` for users without).

    ``new_items`` has ``user_id``, ``item_id``, ``rank`` and ``reason`` (a key of
    ``NEW_REASON_VALUES``) and passed :func:`check_new_items`.
    """
    codes = pl.col(REASON).replace_strict(NEW_REASON_VALUES, return_dtype=pl.UInt16)
    per_user = (
        new_items.sort(C.USER, C.RANK)
        .group_by(C.USER, maintain_order=True)
        .agg(pl.col(C.ITEM).cast(pl.UInt32), codes.alias(REASON))
    )
    items = {
        user: (np.asarray(found, ">u4").tobytes(), np.asarray(why, ">u2").tobytes())
        for user, found, why in per_user.iter_rows()
    }
    empty = (b"", b"")
    pairs = [items.get(user, empty) for user in user_ids.tolist()]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def version_buckets(client: Client, version: str, proposed: int, cfg: RedisConfig) -> int:
    """The version's bucket count: ``proposed`` if this writer is first, else the stored one."""
    meta = keys.meta_key(version, cfg.key_prefix)

    def settle() -> int:
        pipe = client.pipeline(transaction=False)
        pipe.hsetnx(meta, BUCKETS_FIELD, proposed)
        pipe.hget(meta, BUCKETS_FIELD)
        _, stored = pipe.execute()
        return int(stored)

    return with_retries(settle, cfg, "user write")


def _families(packed: PackedUsers) -> list[tuple[str, list[bytes]]]:
    families: list[tuple[str, list[bytes]]] = [("u", packed.head)]
    if any(packed.tail):
        families.append(("t", packed.tail))
    if packed.reasons is not None:
        families.append(("r", packed.reasons))
    if packed.new is not None and packed.new_reasons is not None and any(packed.new):
        families += [("n", packed.new), ("w", packed.new_reasons)]
    return families


def _intended(
    packed: PackedUsers, families: list[tuple[str, list[bytes]]], buckets: int
) -> Written:
    """Fields each family sends per bucket (a user's empty value is not sent)."""
    counts = {
        family: np.bincount(
            packed.bucket[np.fromiter((bool(v) for v in values), bool, len(values))],
            minlength=buckets,
        ).astype(np.int64)
        for family, values in families
    }
    return Written(buckets, counts)


def _bucket_runs(bucket: np.ndarray, start: int, length: int) -> list[tuple[int, int, int]]:
    """``(bucket, first, end)`` row ranges of one chunk (rows are sorted by bucket)."""
    part = bucket[start : start + length]
    cuts = np.flatnonzero(np.diff(part)) + 1
    firsts = np.concatenate(([0], cuts)) + start
    ends = np.concatenate((cuts, [length])) + start
    return list(zip(part[firsts - start].tolist(), firsts.tolist(), ends.tolist(), strict=True))


@dataclass(frozen=True)
class _Batch:
    """One shard's packed fields, sent and counted back chunk by chunk."""

    client: Client
    version: str
    prefix: str
    ttl: int
    fields: list[bytes]
    """Decimal user ids, in the packed (bucket) order."""
    families: list[tuple[str, list[bytes]]]

    def _sent(self, values: list[bytes], first: int, end: int) -> list[tuple[bytes, bytes]]:
        """``(field, value)`` of the rows ``first:end`` that have a value (empty is not sent)."""
        rows = zip(self.fields[first:end], values[first:end], strict=True)
        return [(name, value) for name, value in rows if value]

    def write(self, runs: list[tuple[int, int, int]]) -> None:
        """``HSET`` + ``EXPIRE`` of every family's bucket hashes touched by ``runs``."""
        pipe = self.client.pipeline(transaction=False)
        for family, values in self.families:
            for bucket, first, end in runs:
                flat = [part for pair in self._sent(values, first, end) for part in pair]
                if flat:
                    key = keys.user_bucket_key(self.version, bucket, self.prefix, family)
                    pipe.hset(key, items=flat)
                    pipe.expire(key, self.ttl)
        pipe.execute()

    def count(self, runs: list[tuple[int, int, int]]) -> dict[str, int]:
        """Fields of each family found again (``HMGET`` of the fields sent)."""
        pipe = self.client.pipeline(transaction=False)
        asked: list[str] = []  # the family of each HMGET, in pipeline order
        for family, values in self.families:
            for bucket, first, end in runs:
                sent = [name for name, _ in self._sent(values, first, end)]
                if sent:
                    pipe.hmget(
                        keys.user_bucket_key(self.version, bucket, self.prefix, family), sent
                    )
                    asked.append(family)
        counted = dict.fromkeys((family for family, _ in self.families), 0)
        for family, reply in zip(asked, pipe.execute(), strict=True):
            counted[family] += sum(v is not None for v in reply)
        return counted


def write_users(
    client: Client,
    version: str,
    recs: pl.DataFrame,
    cfg: RedisConfig,
    new_items: pl.DataFrame | None = None,
) -> Written:
    """Write the users of ``recs`` (and their ``new_items``) into ``version``; return the
    fields stored.

    Every family's fields are counted back after writing; the returned counts are what the
    version must hold for these users (:func:`recsys_batch.publish.versions.verify_version`).

    Parameters
    ----------
    recs
        Schema ``columns.RECOMMENDATIONS``: each user's top N, rank 1 = best (at most
        ``keys.MAX_TOP_N``), optionally with a ``reason`` column (one reason per item).
    new_items
        Each user's list of items they never bought (#26): ``user_id``, ``item_id``, ``rank``,
        ``reason`` (a key of ``NEW_REASON_VALUES``), at most ``keys.ITEMS_PER_FIELD`` per
        user, only users of ``recs``; stored in the ``n`` and ``w`` families.

    Raises
    ------
    PublishError
        Redis failed after the retries, refused a write (out of memory, ACL), or a written
        field of any family was missing when counted back.
    ValueError
        A negative user id, an item id that cannot be packed, or a repeated (user, rank).
    """
    if recs.height == 0:
        return Written()
    check_recommendations(recs)
    if new_items is not None:
        check_new_items(new_items, recs)
    n_users = recs[C.USER].n_unique()
    proposed = cfg.user_buckets or keys.bucket_count(n_users)
    buckets = version_buckets(client, version, proposed, cfg)
    packed = packed_users(recs, buckets)
    if new_items is not None:
        new, new_reasons = packed_new_items(new_items, packed.user_ids)
        packed = replace(packed, new=new, new_reasons=new_reasons)
    fields = [str(u).encode() for u in packed.user_ids.tolist()]
    families = _families(packed)
    batch = _Batch(client, version, cfg.key_prefix, ttl_seconds(cfg), fields, families)
    found = dict.fromkeys((family for family, _ in families), 0)
    for start, length in chunks(len(fields), cfg.chunk_size):
        runs = _bucket_runs(packed.bucket, start, length)
        with_retries(partial(batch.write, runs), cfg, "user write")
        counted = with_retries(partial(batch.count, runs), cfg, "user count-back")
        for family, hits in counted.items():
            found[family] += hits
    intended = _intended(packed, families, buckets)
    short = {f: n for f, n in found.items() if n != intended.total(f)}
    if short:
        detail = ", ".join(f"{n} of {intended.total(f)} {f!r}" for f, n in sorted(short.items()))
        msg = f"fields missing right after writing ({detail}); evicted? check maxmemory-policy"
        raise PublishError(msg)
    return intended
