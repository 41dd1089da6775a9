"""Lookups against the live version: the only code of the API that talks to Redis.

A lookup is one round trip: the live-version pointer (``P:current``) is cached for
``current_cache_seconds`` together with everything immutable about that version (format,
generated_at, the popular fallback list), so answering a user is one ``GET`` of
``P:v:V:u:{user_id}`` and a batch one ``MGET``; single lookups arriving together share one
``MGET`` (:class:`Coalescer`). Each answer is built from exactly one version: the one its key
was read from, which is also the version it names.

A cached pointer can outlive its version: two publishes within ``current_cache_seconds``
unlink the version the cache still names. So a missing user key is not trusted at once: the
pointer is read again (concurrent misses share that one ``GET``), and when it moved on, the
key is read again from the new version (a batch: the whole ``MGET``, so it still comes from
one version). A hit costs nothing extra; a miss one ``GET`` (two when the version changed).
"""

from __future__ import annotations

import asyncio
import logging
import time
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
_META_FIELDS = ("format", "state", "generated_at", "created_at")


@dataclass(frozen=True, slots=True)
class LiveVersion:
    """What the service caches about the live version (all of it immutable per version)."""

    version: str
    format: int
    generated_at: str | None
    generated_ts: float | None
    popular: tuple[int, ...]
    user_prefix: str
    items_key: str

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
    """What a coalesced GET resolves to when its MGET failed."""

    error: BaseException


class Coalescer:
    """Auto-pipelining: GETs issued in the same event-loop turn go out as one ``MGET``.

    Under concurrency, requests whose bytes arrived together reach their Redis read in the
    same loop iteration; instead of one command each (redis-py spends ~40 us of CPU per
    command) they share one ``MGET``, scheduled with ``call_soon`` so a lone request waits
    only for the end of the current iteration. Each caller still reads its own key, so an
    answer is built from the version it names exactly as without coalescing.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._pending: list[tuple[str, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    def get(self, key: str) -> asyncio.Future[Any]:
        """A future of ``(value, received)``, or a :class:`_Failed`.

        ``value`` is bytes or None; ``received`` the ``time.monotonic()`` when the reply came.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((key, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, asyncio.Future[Any]]]) -> None:
        self.batches += 1
        try:
            if len(batch) == 1:
                values = [await self.client.get(batch[0][0])]
            else:
                values = await self.client.mget([key for key, _ in batch])
            received = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in batch:
                if not future.done():
                    future.set_result(_Failed(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), value in zip(batch, values, strict=True):
            if not future.done():  # a cancelled request (client went away)
                future.set_result((value, received))


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
        self.coalescer = Coalescer(client) if coalesce and not cluster else None
        self.prefix = prefix
        self.current_key = keys.current_key(prefix)
        self.cache_seconds = cache_seconds
        self.cluster = cluster
        self._live: LiveVersion | None = None
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
            self._read_at = sent
            self._expires = time.monotonic() + self.cache_seconds
            return found

    async def recheck(self, since: float) -> LiveVersion:
        """The live version after a key was found missing at ``since`` (``time.monotonic()``).

        A pointer read sent at or after ``since`` is reused; otherwise one ``GET`` goes out,
        through the coalescer when there is one (concurrent misses and lookups share an
        ``MGET``) and without the lock. Only when the pointer moved does it take the lock
        and load the new version (:meth:`refresh`).
        """
        live = self._live
        if live is not None and self._read_at >= since:
            return live
        sent = time.monotonic()
        raw, _ = await self._get(self.current_key)
        version = self._version_of(raw)
        live = self._live
        if live is not None and live.version == version:
            self._read_at = max(self._read_at, sent)
            self._expires = max(self._expires, time.monotonic() + self.cache_seconds)
            return live
        return await self.refresh(force=True, since=sent)

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
            user_prefix=keys.version_prefix(version, self.prefix) + "u:",
            items_key=keys.items_key(version, self.prefix),
        )
        return live, popular_raw is not None

    # --- lookups ---------------------------------------------------------------------------

    def _items(self, live: LiveVersion, user_id: int, raw: Any, k: int) -> tuple[list[int], str]:
        if raw is None:
            metrics.FALLBACK.inc()
            return list(live.popular[:k]), "fallback"
        try:
            items = keys.decode_items(raw)
        except ValueError:
            detail = f"{live.user_prefix}{user_id} is not a comma-separated list of item ids"
            raise Unavailable("corrupt_value", detail) from None
        metrics.PERSONAL.inc()
        return items[:k], "personal"

    async def one(self, user_id: int, k: int) -> tuple[LiveVersion, list[int], str]:
        """One user's top ``k`` items: (version read, items best first, source).

        ``source`` is ``personal``, or ``fallback`` (the version's popular list) for a user the
        version does not know.
        """
        live = self.cached() or await self.refresh()
        raw, received = await self._get(live.user_prefix + str(user_id))
        if raw is None:  # unknown user, or a cached pointer naming an unlinked version
            fresh = await self.recheck(received)
            if fresh.version != live.version:
                live = fresh
                raw, _ = await self._get(live.user_prefix + str(user_id))
        items, source = self._items(live, user_id, raw, k)
        return live, items, source

    async def _get(self, key: str) -> tuple[Any, float]:
        """One key's value (bytes or None) and the ``time.monotonic()`` its reply came.

        Goes through the coalescer when there is one.
        """
        if self.coalescer is not None:
            got = await self.coalescer.get(key)
            if isinstance(got, _Failed):
                if isinstance(got.error, _REDIS_FAILURES):
                    raise redis_down(got.error)
                raise got.error
            return got
        try:
            return await self.client.get(key), time.monotonic()
        except _REDIS_FAILURES as exc:
            raise redis_down(exc) from None

    async def _mget(self, live: LiveVersion, user_ids: list[int]) -> list[Any]:
        """The users' values under ``live`` (one ``MGET``; slot-aware split on a cluster)."""
        names = [live.user_prefix + str(u) for u in user_ids]
        try:
            if self.cluster:
                return list(await self.client.mget_nonatomic(names))
            return list(await self.client.mget(names))
        except _REDIS_FAILURES as exc:
            raise redis_down(exc) from None

    async def many(
        self, user_ids: list[int], k: int
    ) -> tuple[LiveVersion, list[tuple[int, list[int], str]]]:
        """Several users in one round trip (``MGET``; slot-aware split on a cluster)."""
        live = self.cached() or await self.refresh()
        if not user_ids:
            return live, []
        values = await self._mget(live, user_ids)
        if any(value is None for value in values):
            fresh = await self.recheck(time.monotonic())  # the reply just came
            if fresh.version != live.version:  # the whole batch again: one version per answer
                live = fresh
                values = await self._mget(live, user_ids)
        results = []
        for user_id, raw in zip(user_ids, values, strict=True):
            items, source = self._items(live, user_id, raw, k)
            results.append((user_id, items, source))
        return live, results

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
