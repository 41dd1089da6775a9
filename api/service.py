"""Lookups against the live version: the only code of the API that talks to Redis.

A lookup is one round trip: the live-version pointer (``P:current``) is cached for
``current_cache_seconds`` together with everything immutable about that version (format,
generated_at, bucket count, the popular fallback list), so answering users is one pipeline:
an ``HGET`` of each user's field in its bucket hash (format 2, :mod:`keys`), the tail and
reasons fields when the request needs them, and one ``GET P:current``. Single lookups
arriving together share one pipeline (:class:`Coalescer`).

The pointer read in the same round trip makes every answer trustworthy without a second
one: when it still names the cached version, that version is live and complete, so a
missing field is an unknown user (popular list); when it moved (a flip, or two publishes
within ``current_cache_seconds`` unlinking the cached version), the new version is loaded
and the batch read again, so each answer still comes from exactly one version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from redis.exceptions import RedisError

from api import metrics
from api.errors import Unavailable
from recsys_batch.publish import keys

log = logging.getLogger(__name__)

_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
_META_FIELDS = ("format", "state", "generated_at", "created_at", "buckets")


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


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _timestamp(text: str | None) -> float | None:
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
class _Failed:
    """What a coalesced read resolves to when its pipeline failed."""

    error: BaseException


Read = tuple[str, str]
"""One ``HGET``: (bucket key, field)."""
_EXPERIMENT_FIELDS = ("version", "share")


async def read_with_pointer(
    client: Any, reads: list[Read], pointer_key: str, experiment_key: str
) -> list[Any]:
    """One pipeline round trip: every ``HGET`` of ``reads``, ``GET pointer_key`` and the
    experiment's ``HMGET experiment_key version share``."""
    pipe = client.pipeline(transaction=False)
    for key, field in reads:
        pipe.hget(key, field)
    pipe.get(pointer_key)
    pipe.hmget(experiment_key, list(_EXPERIMENT_FIELDS))
    return list(await pipe.execute())


def experiment_state(raw: Any) -> tuple[str | None, str | None]:
    """``(version, share)`` of an ``HMGET P:ab version share`` reply, as text."""
    version, share = raw if raw else (None, None)
    return _text(version), _text(share)


@dataclass(frozen=True, slots=True)
class Experiment:
    """A running A/B experiment: its version (cached like the live one) and share."""

    live: LiveVersion
    share: float


class Coalescer:
    """Auto-pipelining: reads issued in the same event-loop turn share one pipeline.

    Under concurrency, requests whose bytes arrived together reach their Redis read in the
    same loop iteration; instead of one round trip each they share one pipeline (their
    ``HGET``s and a single ``GET`` of the live pointer), scheduled with ``call_soon`` so a
    lone request waits only for the end of the current iteration. Each caller still reads
    its own fields, so an answer is built from the version it names.
    """

    def __init__(self, client: Any, pointer_key: str, experiment_key: str) -> None:
        self.client = client
        self.pointer_key = pointer_key
        self.experiment_key = experiment_key
        self._pending: list[tuple[list[Read], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    def read(self, reads: list[Read]) -> asyncio.Future[Any]:
        """A future of ``(values, pointer, experiment)``, or a :class:`_Failed`."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((reads, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[list[Read], asyncio.Future[Any]]]) -> None:
        self.batches += 1
        try:
            flat = [read for reads, _ in batch for read in reads]
            values = await read_with_pointer(
                self.client, flat, self.pointer_key, self.experiment_key
            )
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in batch:
                if not future.done():
                    future.set_result(_Failed(exc))
            if not isinstance(exc, Exception):
                raise
            return
        pointer, state, at = values[-2], values[-1], 0
        for reads, future in batch:
            mine = values[at : at + len(reads)]
            at += len(reads)
            if not future.done():  # a cancelled request (client went away)
                future.set_result((mine, pointer, state))


Stored = tuple[Any, Any, Any]
"""A user's raw (head, tail, reasons) field values (None where not read or absent)."""
POPULAR_REASON: dict[str, int | str] = {"code": "popular"}


@dataclass(frozen=True, slots=True)
class Answer:
    """One user's answer: items best first, where they came from, and why."""

    items: list[int]
    source: str
    """``personal`` (the user's own list) or ``fallback`` (unknown user: popular items)."""
    fallback_items: int
    """How many of ``items`` came from the popular list."""
    reasons: list[dict[str, int | str]]
    variant: str = "control"
    """A/B arm: ``control`` (the live version) or ``treatment`` (the experiment's version)."""
    live: LiveVersion | None = None
    """The version the answer was read from (the live one or the experiment's)."""


def pick(
    own: Sequence[int], popular: Sequence[int], k: int, exclude: Sequence[int] = ()
) -> tuple[list[int], int]:
    """The first ``k`` of ``own`` then ``popular``, skipping ``exclude``, never repeating.

    Returns the items and how many came from ``popular``.

    >>> pick([1, 2, 3], [3, 9, 8], 4, exclude=[2])
    ([1, 3, 9, 8], 2)
    """
    seen = set(exclude)
    items: list[int] = []
    from_popular = 0
    for source, candidates in ((0, own), (1, popular)):
        for item in candidates:
            if len(items) == k:
                return items, from_popular
            if item not in seen:
                seen.add(item)
                items.append(item)
                from_popular += source
    return items, from_popular


class Lookup:
    """Reads recommendations of the live version through one async Redis client.

    Parameters
    ----------
    client
        ``redis.asyncio.Redis`` (or a cluster client, or ``fakeredis.FakeAsyncRedis``).
    prefix
        Key prefix (``settings.redis.key_prefix``).
    cache_seconds
        How long the live-version pointer is trusted before it is read again.
    cluster
        True for a Redis Cluster client: batches use a slot-aware ``MGET`` split.
    coalesce
        Let concurrent single-user lookups share one ``MGET`` (:class:`Coalescer`); ignored
        on a cluster, where keys of one ``MGET`` must share a slot.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        cache_seconds: float,
        *,
        cluster: bool = False,
        coalesce: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.current_key = keys.current_key(prefix)
        self.experiment_key = keys.experiment_key(prefix)
        self.coalescer = (
            Coalescer(client, self.current_key, self.experiment_key)
            if coalesce and not cluster
            else None
        )
        self.cache_seconds = cache_seconds
        self.cluster = cluster
        self._live: LiveVersion | None = None
        self._experiment: Experiment | None = None
        self._experiment_state: tuple[str | None, str | None] = (None, None)
        """``(version, share)`` of ``P:ab`` when ``_experiment`` was loaded."""
        self._expires = 0.0
        self._read_at = float("-inf")
        """``time.monotonic()`` when the pointer ``GET`` that gave ``_live`` was sent."""
        self._lock = asyncio.Lock()

    # --- the live version ------------------------------------------------------------------

    def cached(self) -> LiveVersion | None:
        """The cached live version while it is fresh, else None (no I/O)."""
        if self._live is not None and time.monotonic() < self._expires:
            return self._live
        return None

    @property
    def last_known(self) -> LiveVersion | None:
        """The last live version seen, fresh or not (for the age gauge)."""
        return self._live

    async def live(self) -> LiveVersion:
        """The live version, from the cache when fresh.

        Raises
        ------
        Unavailable
            Redis is down, no version is live, or the live version cannot be read.
        """
        found = self.cached()
        if found is not None:
            return found
        return await self.refresh()

    async def refresh(self, *, force: bool = False, since: float | None = None) -> LiveVersion:
        """Read ``P:current`` again (one ``GET``; one more round trip when it changed).

        Parameters
        ----------
        force
            Read the pointer even while the cache is fresh.
        since
            With ``force``: when the caller saw its key missing (the reply's arrival, as
            ``time.monotonic()``); a pointer read sent at or after it by a concurrent caller
            saw a state at least as new, and is reused instead of sending another.
        """
        async with self._lock:
            if not force:
                found = self.cached()
                if found is not None:
                    return found
            elif since is not None and self._live is not None and self._read_at >= since:
                return self._live
            sent = time.monotonic()
            version = await self._pointer()
            if self._live is not None and self._live.version == version:
                found = self._live
            else:
                found, popular_found = await self._load(version)
                if not popular_found:
                    # The version's keys are being removed under us (cleanup after a newer
                    # publish): the pointer has most likely moved on already.
                    sent = time.monotonic()
                    newer = await self._pointer()
                    if newer != version:
                        version = newer
                        found, _ = await self._load(version)
                if self._live is not None:
                    metrics.VERSION_CHANGES.inc()
                    log.info("live version is now %s (was %s)", version, self._live.version)
            self._live = found
            await self._refresh_experiment(found)
            self._read_at = sent
            self._expires = time.monotonic() + self.cache_seconds
            return found

    async def _refresh_experiment(self, live: LiveVersion) -> None:
        """Read ``P:ab`` (one ``HMGET``); load the experiment's version when it changed.

        An experiment whose version cannot be served (gone, incomplete, the live one) is
        ignored with a warning: everyone gets the live version rather than a 503.
        """
        try:
            raw = await self.client.hmget(self.experiment_key, list(_EXPERIMENT_FIELDS))
        except _REDIS_FAILURES as exc:
            raise redis_down(exc) from None
        state = experiment_state(raw)
        if state == self._experiment_state and (
            self._experiment is None or self._experiment.live.version != live.version
        ):
            return
        self._experiment_state, self._experiment = state, None
        version, share_text = state
        if version is None or version == live.version:
            return
        try:
            share = float(share_text or 0)
            loaded, _ = await self._load(version)
        except ValueError:
            log.warning("A/B experiment ignored: share %r is not a number", share_text)
            return
        except Unavailable as exc:
            if exc.reason == "redis_unavailable":
                raise
            log.warning("A/B experiment ignored: %s", exc.detail)
            return
        self._experiment = Experiment(loaded, min(max(share, 0.0), 1.0))
        log.info("A/B experiment: %s serves %.1f%% of the users", version, 100 * share)

    async def _pointer(self) -> str:
        """The version id ``P:current`` names (one ``GET``)."""
        try:
            raw = await self.client.get(self.current_key)
        except _REDIS_FAILURES as exc:
            raise redis_down(exc) from None
        return self._version_of(raw)

    def _version_of(self, raw: Any) -> str:
        """The pointer's value as a version id; :class:`Unavailable` when it is not set."""
        if raw is None:
            detail = (
                f"no version is live: {self.current_key} is not set "
                "(fix: run `recsys nightly-batch`, or check RECSYS_REDIS__KEY_PREFIX)"
            )
            raise Unavailable("no_live_version", detail)
        return _text(raw) or ""

    async def _load(self, version: str) -> tuple[LiveVersion, bool]:
        """The version's cached facts, and whether its popular key was there."""
        try:
            keys.check_version(version)
        except ValueError:
            detail = f"{self.current_key} holds {version[:80]!r}, not a version id"
            raise Unavailable("corrupt_value", detail) from None
        meta_key = keys.meta_key(version, self.prefix)
        popular_key = keys.popular_key(version, self.prefix)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(meta_key, list(_META_FIELDS))
            pipe.get(popular_key)
            meta_values, popular_raw = await pipe.execute()
        except _REDIS_FAILURES as exc:
            raise redis_down(exc) from None
        meta = dict(zip(_META_FIELDS, (_text(v) for v in meta_values), strict=True))
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
            detail = f"{popular_key} is not a comma-separated list of item ids"
            raise Unavailable("corrupt_value", detail) from None
        generated_at = meta["generated_at"] or meta["created_at"]
        live = LiveVersion(
            version=version,
            format=int(fmt),
            generated_at=generated_at,
            generated_ts=_timestamp(generated_at),
            popular=popular,
            buckets=max(1, int(meta["buckets"] or 1)),
            items_key=keys.items_key(version, self.prefix),
        )
        return live, popular_raw is not None

    # --- lookups ---------------------------------------------------------------------------

    async def one(
        self, user_id: int, k: int, exclude: Sequence[int] = (), *, explain: bool = False
    ) -> tuple[LiveVersion, Answer]:
        """One user's top ``k`` items, one round trip (:meth:`many` of one user).

        Returns the version the answer was read from (the experiment's for a user in its
        arm) and the answer.
        """
        live, answers = await self.many([user_id], k, [exclude], explain=explain)
        return answers[0].live or live, answers[0]

    async def many(
        self,
        user_ids: list[int],
        k: int,
        excludes: Sequence[Sequence[int]] | None = None,
        *,
        explain: bool = False,
    ) -> tuple[LiveVersion, list[Answer]]:
        """Users' top ``k`` items from one version, in one pipeline round trip.

        Each user's head field (and tail field when ``k`` plus the exclusions may reach
        past the first 16 items, and reasons field with ``explain``) is read together with
        the live pointer. A pointer that moved means the cached version may be gone: the
        version is reloaded and the whole batch read again, so every answer comes from one
        version. Otherwise a missing field is an unknown user (the popular list).

        The version's facts are trusted past ``cache_seconds`` too: the pointer read in the
        same pipeline says whether they still apply, so a lookup stays one round trip when
        the cache period ends (only a flip costs a second one, once for all waiting lookups).

        With an A/B experiment (``P:ab``), a user whose slot is in its share is read from
        the experiment's version instead (``keys.in_treatment``); ``P:ab`` is read in the same
        pipeline, and a change reloads it like a moved pointer. Returns the live version.
        """
        live = self._live if self._live is not None else await self.refresh()
        excludes = excludes or [()] * len(user_ids)
        arms = self._arms(live, user_ids)
        values, pointer, state = await self._read(arms, user_ids, k, excludes, explain)
        if self._version_of(pointer) != live.version or (
            experiment_state(state) != self._experiment_state
        ):
            live = await self.refresh(force=True, since=time.monotonic())
            arms = self._arms(live, user_ids)
            values, _, _ = await self._read(arms, user_ids, k, excludes, explain)
        return live, [
            self._answer(arm, variant, user_id, got, k, exclude)
            for (arm, variant), user_id, got, exclude in zip(
                arms, user_ids, values, excludes, strict=True
            )
        ]

    def _arms(self, live: LiveVersion, user_ids: list[int]) -> list[tuple[LiveVersion, str]]:
        """Each user's version and variant: the experiment's for users in its share."""
        found = self._experiment
        if found is None:
            return [(live, "control")] * len(user_ids)
        return [
            (found.live, "treatment") if keys.in_treatment(u, found.share) else (live, "control")
            for u in user_ids
        ]

    def _reads(self, live: LiveVersion, user_id: int, need_tail: bool, explain: bool) -> list[Read]:
        field = str(user_id)
        reads = [(live.key(user_id), field)]
        if need_tail:
            reads.append((live.key(user_id, "t"), field))
        if explain:
            reads.append((live.key(user_id, "r"), field))
        return reads

    async def _read(
        self,
        arms: list[tuple[LiveVersion, str]],
        user_ids: list[int],
        k: int,
        excludes: Sequence[Sequence[int]],
        explain: bool,
    ) -> tuple[list[Stored], Any, Any]:
        """Each user's (head, tail, reasons) values, the pointer and the experiment state,
        in one round trip."""
        plans = []
        for (live, _), user_id, exclude in zip(arms, user_ids, excludes, strict=True):
            need_tail = k + len(exclude) > keys.ITEMS_PER_FIELD
            plans.append((need_tail, self._reads(live, user_id, need_tail, explain)))
        flat = [read for _, reads in plans for read in reads]
        if self.coalescer is not None:
            got = await self.coalescer.read(flat)
            if isinstance(got, _Failed):
                if isinstance(got.error, _REDIS_FAILURES):
                    raise redis_down(got.error)
                raise got.error
            values, pointer, state = got
        else:
            try:
                *values, pointer, state = await read_with_pointer(
                    self.client, flat, self.current_key, self.experiment_key
                )
            except _REDIS_FAILURES as exc:
                raise redis_down(exc) from None
        stored: list[Stored] = []
        at = 0
        for need_tail, reads in plans:
            mine = values[at : at + len(reads)]
            at += len(reads)
            tail = mine[1] if need_tail else None
            stored.append((mine[0], tail, mine[-1] if explain else None))
        return stored, pointer, state

    def _answer(
        self,
        live: LiveVersion,
        variant: str,
        user_id: int,
        got: Stored,
        k: int,
        exclude: Sequence[int],
    ) -> Answer:
        head, tail, reasons_raw = got
        (metrics.TREATMENT if variant == "treatment" else metrics.CONTROL).inc()
        if head is None:
            metrics.FALLBACK.inc()
            items, from_popular = pick((), live.popular, k, exclude)
            popular_why = [POPULAR_REASON] * len(items)
            return Answer(items, "fallback", from_popular, popular_why, variant, live)
        try:
            own = keys.unpack_items(head, tail)
            reasons = keys.decode_reasons(reasons_raw)
        except ValueError:
            detail = f"{live.key(user_id)} field {user_id} is not a packed list of item ids"
            raise Unavailable("corrupt_value", detail) from None
        metrics.PERSONAL.inc()
        items, from_popular = pick(own, live.popular, k, exclude)
        why = dict(zip(own, reasons, strict=False))
        explained = [why.get(i, POPULAR_REASON) for i in items]
        return Answer(items, "personal", from_popular, explained, variant, live)

    async def details(self, live: LiveVersion, item_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Attributes of items (department, brand, ...) published with ``live`` (one HMGET).

        Items the version has no attributes for map to ``{}``.
        """
        unique = list(dict.fromkeys(item_ids))
        if not unique:
            return {}
        try:
            values = await self.client.hmget(live.items_key, [str(i) for i in unique])
        except _REDIS_FAILURES as exc:
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

    async def ping(self) -> None:
        """Raise :class:`Unavailable` unless Redis answers ``PING``."""
        try:
            await self.client.ping()
        except _REDIS_FAILURES as exc:
            raise redis_down(exc) from None
