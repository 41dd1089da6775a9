"""Lookups against the live version: the only code of the API that talks to Redis.

A lookup is one round trip: the live-version pointer (``P:current``) is cached for
``current_cache_seconds`` together with everything immutable about that version (format,
generated_at, bucket count, the popular fallback list), so answering users is one pipeline:
an ``HGET`` of each user's field in its bucket hash (format 2, :mod:`keys`), the tail and
reasons fields when the request needs them, one ``GET P:current`` and the A/B state
(``HMGET P:ab``). Lookups arriving together share one pipeline (:class:`Coalescer`), whose
commands are packed by hand and whose replies are read under one timeout (:mod:`api.wire`);
each request's answer is built in one pass over them, so a request costs the event loop one
wake-up.

The pointer read in the same round trip makes every answer trustworthy without a second
one: when it still names the cached version, that version is live and complete, so a
missing field is an unknown user (popular list); when it moved (a flip, or two publishes
within ``current_cache_seconds`` unlinking the cached version), the new version is loaded
and the batch read again, so each answer still comes from exactly one version.

A lookup with a scenario, rules or ``new_only`` reads the user's head, tail, reasons and
new items (their reasons too with ``explain``) in the same pipeline, and the rule engine
builds the answer with the version's item attributes (read once when the version is loaded)
and the shop state, which rides in the same pipeline whenever the service's copy is due
(:mod:`api.shop`): still one round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from api import metrics
from api.answers import Answer, Plan, answers_of, families_read
from api.coalesce import Coalescer, Job, Read
from api.errors import Unavailable
from api.live import (
    EXPERIMENT_FIELDS,
    META_FIELDS,
    REDIS_FAILURES,
    Experiment,
    Failed,
    LiveVersion,
    experiment_state,
    item_details,
    loaded_version,
    redis_down,
    text,
)
from api.shop import PLAIN, Command, Options, ShopCache
from api.wire import Wire, pack, pack_hgets
from recsys_batch.publish import keys

log = logging.getLogger(__name__)


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
        Let lookups issued together share one round trip (:class:`Coalescer`); ignored on
        a cluster, where a pipeline is split by node anyway.
    shop_seconds
        How long the shop state read with a lookup is used (:class:`api.shop.ShopCache`).
    clock
        ``time.monotonic`` of the shop state's staleness (tests pass their own).
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        cache_seconds: float,
        *,
        cluster: bool = False,
        coalesce: bool = False,
        shop_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.current_key = keys.current_key(prefix)
        self.experiment_key = keys.experiment_key(prefix)
        self.coalescer = Coalescer(self._run) if coalesce and not cluster else None
        self.wire = None if cluster else Wire.for_client(client)
        """Packs and parses the lookup pipeline itself; None: redis-py's pipeline."""
        self._pointer_reads = pack(b"GET", self.current_key.encode()) + pack(
            b"HMGET", self.experiment_key.encode(), *(f.encode() for f in EXPERIMENT_FIELDS)
        )
        self.cache_seconds = cache_seconds
        self.shop = ShopCache(prefix, shop_seconds, clock=clock)
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
            raw = await self.client.hmget(self.experiment_key, list(EXPERIMENT_FIELDS))
        except REDIS_FAILURES as exc:
            raise redis_down(exc) from None
        state = experiment_state(raw)
        if state == self._experiment_state and (
            self._experiment is None or self._experiment.live.version != live.version
        ):
            return
        version, share_text = state
        if version is None or version == live.version:
            self._experiment_state, self._experiment = state, None
            return
        try:
            share = float(share_text or 0)
            loaded, _ = await self._load(version)
        except ValueError:
            log.warning("A/B experiment ignored: share %r is not a number", share_text)
            self._experiment_state, self._experiment = state, None
            return
        except Unavailable as exc:
            if exc.reason == "redis_unavailable":
                raise  # state kept: the next lookup sees P:ab differ and tries again
            log.warning("A/B experiment ignored: %s", exc.detail)
            self._experiment_state, self._experiment = state, None
            return
        # Both at once: a lookup planned meanwhile sees the old pair or the new one.
        self._experiment_state = state
        self._experiment = Experiment(loaded, min(max(share, 0.0), 1.0))
        log.info("A/B experiment: %s serves %.1f%% of the users", version, 100 * share)

    async def _pointer(self) -> str:
        """The version id ``P:current`` names (one ``GET``)."""
        try:
            raw = await self.client.get(self.current_key)
        except REDIS_FAILURES as exc:
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
        return text(raw) or ""

    async def _load(self, version: str) -> tuple[LiveVersion, bool]:
        """The version's cached facts, and whether its popular key was there."""
        try:
            keys.check_version(version)
        except ValueError:
            detail = f"{self.current_key} holds {version[:80]!r}, not a version id"
            raise Unavailable("corrupt_value", detail) from None
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(keys.meta_key(version, self.prefix), list(META_FIELDS))
            pipe.get(keys.popular_key(version, self.prefix))
            pipe.hgetall(keys.items_key(version, self.prefix))
            meta_values, popular_raw, items_raw = await pipe.execute()
        except REDIS_FAILURES as exc:
            raise redis_down(exc) from None
        live = loaded_version(version, self.prefix, meta_values, popular_raw, items_raw)
        return live, popular_raw is not None

    # --- lookups ---------------------------------------------------------------------------

    async def one(
        self,
        user_id: int,
        k: int,
        exclude: Sequence[int] = (),
        *,
        explain: bool = False,
        options: Options = PLAIN,
    ) -> tuple[LiveVersion, Answer]:
        """One user's top ``k`` items, one round trip (:meth:`many` of one user).

        Returns the version the answer was read from (the experiment's for a user in its
        arm) and the answer.
        """
        live = self._live if self._live is not None else await self.refresh()
        found = await self._lookup(live, [user_id], k, [exclude], explain, options, check=True)
        if found is None:  # straight to _lookup, not through many: a coroutine less (#27)
            live, found = await self._reread([user_id], k, [exclude], explain, options)
        return found[0].live or live, found[0]

    async def many(
        self,
        user_ids: list[int],
        k: int,
        excludes: Sequence[Sequence[int]] | None = None,
        *,
        explain: bool = False,
        options: Options = PLAIN,
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

        ``options`` (a scenario, rules, a store, ``new_only``) apply to every user; with a
        scenario, rules or ``new_only`` each user's head, tail, reasons and new items (their
        reasons too with ``explain``) are read and the rule engine builds the answer. The shop
        state rides in the same pipeline when the service's copy is due (:mod:`api.shop`).

        Raises
        ------
        RuleError
            An unknown scenario, or rules contradicting the scenario's (a 422).
        """
        live = self._live if self._live is not None else await self.refresh()
        excludes = excludes or [()] * len(user_ids)
        answers = await self._lookup(live, user_ids, k, excludes, explain, options, check=True)
        if answers is None:
            return await self._reread(user_ids, k, excludes, explain, options)
        return live, answers

    async def _reread(self, *args: Any) -> tuple[LiveVersion, list[Answer]]:
        """:meth:`many` once the pointer or the experiment moved: reload, read again."""
        live = await self.refresh(force=True, since=time.monotonic())
        answers = await self._lookup(live, *args, check=False)
        if answers is None:  # pragma: no cover - an unchecked lookup always answers
            raise Unavailable("version_incomplete", "the live version changed twice")
        return live, answers

    async def _lookup(
        self,
        live: LiveVersion,
        user_ids: list[int],
        k: int,
        excludes: Sequence[Sequence[int]],
        explain: bool,
        options: Options,
        *,
        check: bool,
    ) -> list[Answer] | None:
        """Plan the users' reads, send them (in the round trip shared with concurrent
        lookups when coalescing) and return their answers; None when ``check`` and the
        pointer or the A/B state no longer match what the plan assumed."""
        experiment = self._experiment
        plans: list[Plan] = []
        reads: list[Read] = []
        count = 0  # their replies
        for user_id, exclude in zip(user_ids, excludes, strict=True):
            arm, variant = live, "control"
            if experiment is not None and keys.in_treatment(user_id, experiment.share):
                arm, variant = experiment.live, "treatment"
            bucket = b":%d" % keys.bucket_of(user_id, arm.buckets)
            need_tail = options.ruled or k + len(exclude) > keys.ITEMS_PER_FIELD
            families = families_read(options.ruled, need_tail, explain)
            count += len(families)
            reads.append((arm.wire_prefix, families, bucket, b"%d" % user_id))
            plans.append((arm, variant, user_id, exclude, need_tail, options))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        expected = live.version if check else None
        job: Job = (plans, k, explain, expected, self._experiment_state, reads, count, future)
        if self.coalescer is not None:
            self.coalescer.add(job)
        else:
            await self._run([job])
        got = await future
        if type(got) is Failed:
            if isinstance(got.error, REDIS_FAILURES):
                raise redis_down(got.error)
            raise got.error
        return got

    async def _read(self, reads: list[Read], count: int, extra: list[Command]) -> list[Any]:
        """One round trip: every ``HGET`` of ``reads`` (``count`` replies), ``GET P:current``,
        ``HMGET P:ab version share`` and the ``extra`` commands (shop state); their replies
        in that order."""
        if self.wire is not None:
            packed = b"".join([pack_hgets(*read) for read in reads])
            packed += self._pointer_reads
            if extra:
                packed += b"".join([pack(*command) for command in extra])
            return await self.wire.exchange(packed, count + 2 + len(extra))
        pipe = self.client.pipeline(transaction=False)
        for prefix, families, suffix, field in reads:
            for family in families:
                pipe.hget(prefix + family + suffix, field)
        pipe.get(self.current_key)
        pipe.hmget(self.experiment_key, list(EXPERIMENT_FIELDS))
        for name, *args in extra:  # redis-py (a cluster's too) looks commands up by text
            pipe.execute_command(name.decode(), *args)
        return list(await pipe.execute())

    async def _run(self, batch: list[Job]) -> None:
        """Send the jobs' reads in one round trip and resolve each job's future: its
        answers, None (it expected another version or A/B state: read again), or
        :class:`Failed`."""
        stores = [p[5].store for job in batch for p in job[0] if p[5].store is not None]
        extra, parts, sent = self.shop.reads(stores)
        reads = [read for job in batch for read in job[5]]
        at = sum([job[6] for job in batch])
        try:
            values = await self._read(reads, at, extra)
            if extra:
                self.shop.update(parts, values[len(values) - len(extra) :], sent)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for job in batch:
                if not job[7].done():
                    job[7].set_result(Failed(exc))
            if not isinstance(exc, Exception):
                raise
            return
        pointer = text(values[at])
        state = experiment_state(values[at + 1])
        counts = [0, 0, 0]  # treatment, personal, fallback
        at = 0
        for plans, k, explain, expected, expected_state, _, n, future in batch:
            mine = values[at : at + n]
            at += n
            if future.done():  # a cancelled request (client went away)
                continue
            if expected is not None and (pointer != expected or state != expected_state):
                try:
                    self._version_of(pointer)  # not set at all: 503 no_live_version
                    future.set_result(None)
                except Unavailable as exc:
                    future.set_result(Failed(exc))
                continue
            try:
                future.set_result(answers_of(plans, mine, k, explain, counts, self.shop))
            except Exception as exc:  # noqa: BLE001 - this request's error, not the batch's
                future.set_result(Failed(exc))
        treatment, personal, fallback = counts
        if personal + fallback > treatment:
            metrics.CONTROL.inc(personal + fallback - treatment)
        if treatment:
            metrics.TREATMENT.inc(treatment)
        if personal:
            metrics.PERSONAL.inc(personal)
        if fallback:
            metrics.FALLBACK.inc(fallback)

    async def details(self, live: LiveVersion, item_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Attributes of items published with ``live`` (:func:`api.live.item_details`)."""
        return await item_details(self.client, live, item_ids)

    async def ping(self) -> None:
        """Raise :class:`Unavailable` unless Redis answers ``PING``."""
        try:
            await self.client.ping()
        except REDIS_FAILURES as exc:
            raise redis_down(exc) from None
