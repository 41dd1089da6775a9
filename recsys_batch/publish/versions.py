"""Publish one night's recommendations to Redis as a new version, then flip the pointer.

The layout is :mod:`recsys_batch.publish.keys` (golden-tested; docs/redis-format.md). A publish:

1. removes versions left half-written by a crashed run (state ``writing``, neither live nor
   previous) and registers the new version in ``P:versions``;
2. writes ``P:v:V:meta`` with state ``writing``, then every user's list in chunks of
   ``cfg.chunk_size`` users per round trip (non-transactional pipelining), then the popular
   fallback list and the item attributes; every key gets the safety TTL;
3. verifies the count: ``EXISTS`` over every written key must equal what was written;
4. marks the meta ``complete`` and only then flips ``P:current`` (and ``P:previous``) in one
   MULTI/EXEC. On a Redis Cluster ``current`` and ``previous`` live in different slots, so the
   flip is ``SET current`` then ``SET previous``: readers only ever read ``current``, which
   changes in one command, so they still see either the old or the new version, never a mix;
5. unlinks (``UNLINK``: freed in a background thread) every version but the live one and
   the previous one.

A failed round trip is retried with exponential backoff on connection errors and timeouts;
after ``cfg.retries`` retries :class:`~recsys_batch.errors.PublishError` is raised and
``P:current`` was never touched, so the old version keeps serving.

Users are written through a fast path on a single server: the ``SET`` commands of a chunk are
encoded by Polars straight into the Redis protocol (RESP) and sent in one buffer, and the next
chunk is encoded while Redis executes the previous one. A Redis Cluster or a test double
(fakeredis) goes through redis-py's ordinary pipeline instead.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import polars as pl
import redis
from redis.typing import EncodableT, FieldT

from recsys_batch.config import RedisConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys
from recsys_batch.publish.store import Client, is_cluster

# A Redis hash as redis-py types it (its ``mapping`` parameter is invariant in the key type).
HashFields = dict[FieldT, EncodableT]

log = logging.getLogger(__name__)

T = TypeVar("T")
VALUE = "value"
_RETRYABLE = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)
_REAL_CONNECTIONS = (
    redis.connection.Connection,
    redis.connection.SSLConnection,
    redis.connection.UnixDomainSocketConnection,
)
SCAN_COUNT = 10_000
UNLINK_BATCH = 10_000


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


# --- pure helpers -------------------------------------------------------------------------


def new_version_id(now: datetime | None = None) -> str:
    """A sortable, unique version id such as ``20261128T031500Z-5f3a``."""
    now = now or datetime.now(UTC)
    return keys.check_version(f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}")


def ttl_seconds(cfg: RedisConfig) -> int:
    """The safety TTL of every key of a version, in seconds."""
    return int(cfg.ttl_days * 86_400)


def user_values(recs: pl.DataFrame) -> pl.DataFrame:
    """One row per user: ``user_id`` and ``value``, the stored list of items best first.

    Parameters
    ----------
    recs
        Schema ``columns.RECOMMENDATIONS`` (user_id, item_id, rank 1..k, score); at most one
        row per (user, rank).

    Returns
    -------
    pl.DataFrame
        ``user_id`` (Int64) and ``value`` (String, ``keys.encode_items`` format).

    Raises
    ------
    ValueError
        A user id is negative (it could not form a valid key) or a (user, rank) repeats.

    Examples
    --------
    >>> recs = pl.DataFrame({"user_id": [7, 7], "item_id": [11, 10], "rank": [2, 1]})
    >>> user_values(recs).row(0)
    (7, '10,11')
    """
    if recs.height == 0:
        return pl.DataFrame(schema={C.USER: pl.Int64, VALUE: pl.String})
    if recs[C.USER].min() < 0:  # type: ignore[operator]
        msg = "recommendations contain a negative user_id; keys are built from ids >= 0 only"
        raise ValueError(msg)
    # A pivot on rank is ~3x faster than a group_by + str.join on millions of rows; it
    # refuses a repeated (user, rank) pair, which is exactly the check we want.
    try:
        wide = recs.select(C.USER, C.ITEM, pl.col(C.RANK).cast(pl.Int64)).pivot(
            on=C.RANK, index=C.USER, values=C.ITEM
        )
    except pl.exceptions.ComputeError as exc:
        msg = "recommendations repeat a (user_id, rank) pair; expected ranks 1..k per user"
        raise ValueError(msg) from exc
    ranks = sorted((c for c in wide.columns if c != C.USER), key=int)
    value = pl.concat_str(
        [pl.col(r).cast(pl.String) for r in ranks],
        separator=keys.ITEM_SEPARATOR,
        ignore_nulls=True,
    )
    return wide.select(pl.col(C.USER).cast(pl.Int64), value.alias(VALUE))


def resp_set_commands(values: pl.DataFrame, key_prefix: str, ttl: int) -> pl.Series:
    """``SET key value EX ttl`` per row, encoded in the Redis protocol (RESP) by Polars.

    ``key_prefix`` is ``keys.version_prefix(version, prefix) + "u:"``; the key of user ``u``
    is then exactly ``keys.user_key(version, u, prefix)`` (pinned by a golden test).

    Examples
    --------
    >>> frame = pl.DataFrame({"user_id": [7], "value": ["1,2"]})
    >>> resp_set_commands(frame, "p:v:x:u:", 60).item()
    '*5\\r\\n$3\\r\\nSET\\r\\n$8\\r\\np:v:x:u:7\\r\\n$3\\r\\n1,2\\r\\n$2\\r\\nEX\\r\\n$2\\r\\n60\\r\\n'
    """
    key = pl.lit(key_prefix) + pl.col(C.USER).cast(pl.String)
    value = pl.col(VALUE)
    ttl_text = str(int(ttl))
    tail = f"\r\n$2\r\nEX\r\n${len(ttl_text)}\r\n{ttl_text}\r\n"
    command = pl.concat_str(
        [
            pl.lit("*5\r\n$3\r\nSET\r\n$"),
            key.str.len_bytes().cast(pl.String),
            pl.lit("\r\n"),
            key,
            pl.lit("\r\n$"),
            value.str.len_bytes().cast(pl.String),
            pl.lit("\r\n"),
            value,
            pl.lit(tail),
        ]
    )
    return values.select(command.alias("resp")).to_series()


def _chunks(height: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, height, max(1, size)):
        yield start, min(size, height - start)


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


def _decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


# --- retries ------------------------------------------------------------------------------


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
        except _RETRYABLE as exc:
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


# --- writing users ------------------------------------------------------------------------


def fast_path_ok(client: Client) -> bool:
    """Raw RESP writes only on a real single-server connection (not cluster, not fakeredis)."""
    if is_cluster(client) or not isinstance(client, redis.Redis):
        return False
    connection_class = client.connection_pool.connection_class
    return connection_class in _REAL_CONNECTIONS


_OK = b"+OK\r\n"


class _OkReader:
    """Reads the replies to pipelined SETs off one connection, checking that each is ``+OK``.

    Reading raw bytes and comparing them in one C call is ~10x cheaper than parsing reply by
    reply. The parser is bypassed only on a connection whose earlier replies were all read
    through this reader; bytes of later replies that arrive early are kept for the next call.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.carry = bytearray()

    def read(self, expected: int) -> None:
        """Consume ``expected`` replies.

        Raises
        ------
        redis.ResponseError
            Redis answered with an error (out of memory, ACL, ...).
        redis.ConnectionError, redis.TimeoutError
            The connection broke or timed out.
        """
        conn = self.conn
        sock = getattr(conn, "_sock", None)
        if sock is None:
            for _ in range(expected):
                conn.read_response()
            return
        received = self.carry
        # Every simple reply (+OK, -ERR ...) ends with exactly one newline.
        lines = received.count(b"\n")
        want = len(_OK) * expected
        while lines < expected:
            try:
                piece = sock.recv(max(65_536, want - len(received)))
            except OSError as exc:
                conn.disconnect()
                if isinstance(exc, TimeoutError):
                    msg = f"timeout reading replies: {exc}"
                    raise redis.TimeoutError(msg) from exc
                msg = f"error reading replies: {exc}"
                raise redis.ConnectionError(msg) from exc
            if not piece:
                conn.disconnect()
                msg = "connection closed by server while reading replies"
                raise redis.ConnectionError(msg)
            lines += piece.count(b"\n")
            received += piece
        if received[:want] == _OK * expected:
            self.carry = received[want:]
            return
        conn.disconnect()
        for line in bytes(received).split(b"\r\n"):
            if line and line != b"+OK":
                raise redis.ResponseError(line.decode(errors="replace").lstrip("-"))
        msg = "unexpected reply to a pipelined SET"  # pragma: no cover - defensive
        raise redis.ResponseError(msg)


def _write_chunk_raw(client: redis.Redis, payload: bytes, expected: int) -> None:
    """Send one chunk of packed SETs on a pooled connection and check every reply."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_packed_command([payload], check_health=False)
        _OkReader(conn).read(expected)
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse this connection
        raise
    finally:
        client.connection_pool.release(conn)


def sorted_user_chunks(recs: pl.DataFrame, chunk_size: int) -> Iterator[pl.DataFrame]:
    """``user_values`` of ``chunk_size`` users at a time, computed lazily chunk by chunk.

    The rows are sorted by user once; each chunk is then pivoted when the writer asks for it,
    i.e. while Redis executes the previous chunk.
    """
    ordered = recs.sort(C.USER)
    chunk_of_row = ordered[C.USER].rle_id() // max(1, chunk_size)
    n_chunks = int(chunk_of_row[-1]) + 1 if ordered.height else 0
    starts = chunk_of_row.search_sorted(pl.Series(range(n_chunks + 1)), side="left").to_list()
    starts[-1] = ordered.height
    for first, end in zip(starts[:-1], starts[1:], strict=True):
        yield user_values(ordered.slice(first, end - first))


def write_users_raw(
    client: redis.Redis,
    values: pl.DataFrame | Iterator[pl.DataFrame],
    key_prefix: str,
    cfg: RedisConfig,
    user_ids: list[pl.Series] | None = None,
) -> list[bytes]:
    """Fast path: encode chunk i+1 while Redis executes chunk i (one connection).

    ``values`` is a ``user_values`` frame, or an iterator of such frames (one per chunk,
    see :func:`sorted_user_chunks`). The user ids written are appended to ``user_ids``.

    Returns the ``EXISTS`` command of every chunk, built while waiting for Redis, for
    :func:`verify_raw`.
    """
    if isinstance(values, pl.DataFrame):
        frame = values
        chunks: Iterator[pl.DataFrame] = (
            frame.slice(start, length) for start, length in _chunks(frame.height, cfg.chunk_size)
        )
    else:
        chunks = values
    ttl = ttl_seconds(cfg)
    checks: list[bytes] = []
    pool = client.connection_pool
    # Connecting is retried and mapped to PublishError like every other round trip.
    conn = with_retries(pool.get_connection, cfg, "user write (connect)")
    reader = _OkReader(conn)
    pending: tuple[bytes, int] | None = None  # sent, replies not read yet
    try:
        for chunk in chunks:
            length = chunk.height
            if user_ids is not None:
                user_ids.append(chunk[C.USER])
            payload = resp_set_commands(chunk, key_prefix, ttl).str.join("").item().encode()
            chunk_keys = chunk.select(pl.lit(key_prefix) + pl.col(C.USER).cast(pl.String))
            check_built = False
            try:
                conn.send_packed_command([payload], check_health=False)
                # Redis is busy with what we just sent: build this chunk's check meanwhile.
                checks.append(resp_exists_command(chunk_keys.to_series()))
                check_built = True
                if pending is not None:
                    reader.read(pending[1])
            except _RETRYABLE:
                # Resend what may be unacknowledged, chunk by chunk, with backoff. SET is
                # idempotent, so repeating an already applied chunk is harmless.
                conn.disconnect()
                reader = _OkReader(conn)
                for unacked, count in ([pending] if pending else []) + [(payload, length)]:
                    with_retries(
                        functools.partial(_write_chunk_raw, client, unacked, count),
                        cfg,
                        "user write",
                    )
                if not check_built:
                    checks.append(resp_exists_command(chunk_keys.to_series()))
                pending = None
                continue
            pending = (payload, length)
        if pending is not None:
            try:
                reader.read(pending[1])
            except _RETRYABLE:
                conn.disconnect()
                last = pending
                with_retries(lambda: _write_chunk_raw(client, *last), cfg, "user write")
        if reader.carry:  # pragma: no cover - defensive: more replies than commands sent
            conn.disconnect()
    except redis.RedisError as exc:
        conn.disconnect()
        msg = f"Redis refused a user write: {type(exc).__name__}: {exc}"
        raise PublishError(msg) from exc
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return checks


def verify_raw(client: redis.Redis, checks: list[bytes], cfg: RedisConfig) -> int:
    """Send the per-chunk ``EXISTS`` commands back to back; return the total count."""
    return with_retries(lambda: _integer_replies(client, checks), cfg, "verification")


def write_users_pipeline(
    client: Client, values: pl.DataFrame, key_prefix: str, cfg: RedisConfig
) -> None:
    """Portable path (Redis Cluster, fakeredis): redis-py pipelines of ``cfg.chunk_size``."""
    ttl = ttl_seconds(cfg)
    user_ids = values[C.USER].to_list()
    texts = values[VALUE].to_list()
    for start, length in _chunks(len(user_ids), cfg.chunk_size):

        def write(start: int = start, length: int = length) -> None:
            pipe = client.pipeline(transaction=False)
            for user_id, text in zip(
                user_ids[start : start + length], texts[start : start + length], strict=True
            ):
                pipe.set(f"{key_prefix}{user_id}", text, ex=ttl)
            pipe.execute()

        with_retries(write, cfg, "user write")


def resp_multikey_command(command: str, names: pl.Series) -> bytes:
    """One ``COMMAND name...`` (EXISTS, UNLINK) in RESP for all ``names``."""
    encoded = pl.concat_str(
        [pl.lit("$"), names.str.len_bytes().cast(pl.String), pl.lit("\r\n"), names, pl.lit("\r\n")]
    )
    body = pl.select(encoded.str.join("")).item() if names.len() else ""
    return f"*{names.len() + 1}\r\n${len(command)}\r\n{command}\r\n{body}".encode()


def resp_exists_command(names: pl.Series) -> bytes:
    """One ``EXISTS name...`` command in RESP for all ``names``."""
    return resp_multikey_command("EXISTS", names)


def _integer_replies(client: redis.Redis, payloads: list[bytes]) -> int:
    """Send commands answering one integer each, back to back; return their sum."""
    conn = client.connection_pool.get_connection()
    total = 0
    try:
        for n, payload in enumerate(payloads):
            conn.send_packed_command([payload], check_health=False)
            if n:
                total += int(conn.read_response())
        if payloads:
            total += int(conn.read_response())
    except BaseException:
        conn.disconnect()
        raise
    finally:
        client.connection_pool.release(conn)
    return total


def count_existing(client: Client, names: pl.Series, cfg: RedisConfig) -> int:
    """How many of ``names`` exist (``EXISTS`` in chunks; one reply per chunk)."""
    total = 0
    fast = fast_path_ok(client)
    for start, length in _chunks(names.len(), cfg.chunk_size):
        batch = names.slice(start, length)
        if fast:

            def count(batch: pl.Series = batch) -> int:
                assert isinstance(client, redis.Redis)
                conn = client.connection_pool.get_connection()
                try:
                    conn.send_packed_command([resp_exists_command(batch)], check_health=False)
                    return int(conn.read_response())
                except BaseException:
                    conn.disconnect()
                    raise
                finally:
                    client.connection_pool.release(conn)
        elif is_cluster(client):

            def count(batch: pl.Series = batch) -> int:
                pipe = client.pipeline(transaction=False)
                for name in batch.to_list():
                    pipe.exists(name)
                return int(sum(pipe.execute()))
        else:

            def count(batch: pl.Series = batch) -> int:
                return int(client.exists(*batch.to_list()))

        total += with_retries(count, cfg, "verification")
    return total


# --- versions -----------------------------------------------------------------------------


def live_version(client: Client, cfg: RedisConfig) -> str | None:
    """The version ``P:current`` names, or None before the first publish."""
    return _text(with_retries(lambda: client.get(keys.current_key(cfg.key_prefix)), cfg, "read"))


def previous_version(client: Client, cfg: RedisConfig) -> str | None:
    """The version ``P:previous`` names (the rollback target), or None."""
    return _text(with_retries(lambda: client.get(keys.previous_key(cfg.key_prefix)), cfg, "read"))


def version_info(client: Client, version: str, cfg: RedisConfig) -> VersionInfo:
    """The decoded meta hash of ``version`` (empty when it expired or was removed)."""
    raw = with_retries(lambda: client.hgetall(keys.meta_key(version, cfg.key_prefix)), cfg, "read")
    return VersionInfo(version, _decode_hash(raw or {}))


def all_versions(client: Client, cfg: RedisConfig) -> list[str]:
    """Every version registered in ``P:versions``, oldest first."""
    raw = with_retries(lambda: client.zrange(keys.versions_key(cfg.key_prefix), 0, -1), cfg, "read")
    return [v for v in (_text(x) for x in raw) if v]


def _unlink_known_users(
    client: Client, version: str, user_ids: pl.Series | None, cfg: RedisConfig
) -> bool:
    """UNLINK ``version``'s keys for ``user_ids`` without a SCAN; True if that was all of them.

    Most nights publish the same users, so the old version's user keys are known without
    scanning the whole keyspace. Only when the number removed equals the user count recorded
    in its meta hash is the SCAN skipped.
    """
    if user_ids is None or not fast_path_ok(client):
        return False
    assert isinstance(client, redis.Redis)
    prefix = cfg.key_prefix
    meta = version_info(client, version, cfg)
    if meta.state != keys.STATE_COMPLETE:
        return False
    user_prefix = keys.version_prefix(version, prefix) + "u:"
    names = pl.select(pl.lit(user_prefix) + user_ids.cast(pl.String)).to_series()
    payloads = [
        resp_multikey_command("UNLINK", names.slice(start, length))
        for start, length in _chunks(names.len(), cfg.chunk_size)
    ]
    removed = with_retries(lambda: _integer_replies(client, payloads), cfg, "cleanup")
    if removed != meta.users:
        return False
    extras = [keys.popular_key(version, prefix), keys.items_key(version, prefix)]

    def finish() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.unlink(*extras, keys.meta_key(version, prefix))
        pipe.zrem(keys.versions_key(prefix), version)
        pipe.execute()

    with_retries(finish, cfg, "cleanup")
    return True


def unlink_version(
    client: Client, version: str, cfg: RedisConfig, user_ids: pl.Series | None = None
) -> int:
    """Remove every key of ``version`` with ``UNLINK`` (non-blocking).

    With ``user_ids`` (the users just published) the user keys are unlinked directly, and the
    keyspace SCAN runs only when that did not account for every user of the version.

    Returns
    -------
    int
        Keys removed by the SCAN pass (0 when the direct pass removed everything).
    """
    if _unlink_known_users(client, version, user_ids, cfg):
        return 0
    pattern = keys.version_prefix(version, cfg.key_prefix) + "*"

    def remove() -> int:
        removed = 0
        batch: list[Any] = []
        for name in client.scan_iter(match=pattern, count=SCAN_COUNT):
            batch.append(name)
            if len(batch) >= UNLINK_BATCH:
                removed += int(client.unlink(*batch))
                batch = []
        if batch:
            removed += int(client.unlink(*batch))
        client.zrem(keys.versions_key(cfg.key_prefix), version)
        return removed

    return with_retries(remove, cfg, f"cleanup of version {version}")


def cleanup_versions(
    client: Client,
    cfg: RedisConfig,
    keep: set[str | None],
    user_ids: pl.Series | None = None,
) -> list[str]:
    """Unlink every registered version not in ``keep`` (half-written ones included)."""
    removed = []
    for version in all_versions(client, cfg):
        if version in keep:
            continue
        unlink_version(client, version, cfg, user_ids)
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
            old = _text(client.get(current))
            client.set(current, version)
            if old and old != version:
                client.set(previous, old)
            return old
        with client.pipeline(transaction=True) as pipe:
            pipe.watch(current)
            old = _text(pipe.get(current))
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


def publish_version(
    client: Client,
    recs: pl.DataFrame,
    popular: list[int],
    items_attrs: pl.DataFrame | None,
    meta: Mapping[str, Any],
    cfg: RedisConfig,
    *,
    version: str | None = None,
) -> str:
    """Write a whole new version, verify it, then make it live; return its id.

    Parameters
    ----------
    client
        From :func:`recsys_batch.publish.store.connect`.
    recs
        Schema ``columns.RECOMMENDATIONS``: each user's top k, rank 1 = best.
    popular
        Fallback items for unknown users, best first.
    items_attrs
        Optional item attributes (``item_id`` + attribute columns) stored as JSON per item.
    meta
        Extra fields of the meta hash (run id, data range, metrics, durations, ...); nested
        values are stored as JSON.
    cfg
        Key prefix, chunk size, TTL and retry policy.
    version
        Version id to use (default: a new timestamped id).

    Raises
    ------
    PublishError
        Redis failed after the retries, refused a write, or the count did not verify. The
        live version is untouched; the half-written one is removed by the next publish (or
        expires with its TTL).
    ValueError
        ``recs`` is empty or malformed (callers check this before touching Redis).
    """
    fast = fast_path_ok(client)
    if recs.height == 0:
        msg = "refusing to publish an empty version (no user has recommendations)"
        raise ValueError(msg)
    if recs[C.USER].min() < 0:  # type: ignore[operator]
        msg = "recommendations contain a negative user_id; keys are built from ids >= 0 only"
        raise ValueError(msg)
    # The fast path pivots chunk by chunk while Redis works; the others need it all at once.
    values = None if fast else user_values(recs)
    version = keys.check_version(version or new_version_id())
    prefix = cfg.key_prefix
    ttl = ttl_seconds(cfg)
    started = time.perf_counter()

    live = live_version(client, cfg)
    previous = previous_version(client, cfg)
    stale = cleanup_versions(client, cfg, keep={live, previous})
    if stale:
        log.info("cleaned %d stale version(s) before writing: %s", len(stale), ", ".join(stale))

    meta_key = keys.meta_key(version, prefix)
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
        pipe.zadd(keys.versions_key(prefix), {version: time.time()})
        pipe.hset(meta_key, mapping=header)
        pipe.expire(meta_key, ttl)
        pipe.execute()

    with_retries(start, cfg, "version start")

    user_prefix = keys.version_prefix(version, prefix) + "u:"
    checks: list[bytes] | None = None
    if values is None:
        assert isinstance(client, redis.Redis)
        written: list[pl.Series] = []
        chunks = sorted_user_chunks(recs, cfg.chunk_size)
        try:
            checks = write_users_raw(client, chunks, user_prefix, cfg, written)
        except pl.exceptions.ComputeError as exc:
            msg = "recommendations repeat a (user_id, rank) pair; expected ranks 1..k per user"
            raise ValueError(msg) from exc
        user_ids = pl.concat(written)
    else:
        write_users_pipeline(client, values, user_prefix, cfg)
        user_ids = values[C.USER]
    n_users = user_ids.len()
    written_users = time.perf_counter()

    items = items_mapping(items_attrs)

    def extras() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.set(keys.popular_key(version, prefix), keys.encode_items(popular), ex=ttl)
        item_key = keys.items_key(version, prefix)
        if items:
            pipe.hset(item_key, mapping=items)
            pipe.expire(item_key, ttl)
        pipe.execute()

    with_retries(extras, cfg, "popular/items write")

    names = pl.Series([keys.popular_key(version, prefix), meta_key])
    if checks is not None:
        assert isinstance(client, redis.Redis)
        found = verify_raw(client, checks, cfg) + count_existing(client, names, cfg)
    else:
        user_keys = pl.select(pl.lit(user_prefix) + user_ids.cast(pl.String))
        names = pl.concat([user_keys.to_series(), names])
        found = count_existing(client, names, cfg)
    expected = n_users + 2
    if found != expected:
        msg = (
            f"verification failed for version {version}: {found} of {expected} keys exist "
            "(evicted? check maxmemory-policy); the live version was left untouched"
        )
        raise PublishError(msg)

    finished: HashFields = {
        "state": keys.STATE_COMPLETE,
        "users": str(n_users),
        "items": str(len(items)),
        "popular": str(len(popular)),
        "write_seconds": f"{written_users - started:.3f}",
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with_retries(lambda: client.hset(meta_key, mapping=finished), cfg, "meta update")
    old = flip_pointer(client, version, cfg)
    log.info(
        "published version %s: %d users in %.2fs (previous: %s)",
        version,
        n_users,
        time.perf_counter() - started,
        old,
    )
    try:
        cleanup_versions(client, cfg, keep={version, old}, user_ids=user_ids)
    except PublishError as exc:  # the flip succeeded; leftovers expire or go next run
        log.warning("cleanup after publish failed: %s", exc)
    return version


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
    ttl = ttl_seconds(cfg)
    pattern = keys.version_prefix(target, cfg.key_prefix) + "*"

    def refresh() -> None:
        pipe = client.pipeline(transaction=False)
        for n, name in enumerate(client.scan_iter(match=pattern, count=SCAN_COUNT), start=1):
            pipe.expire(name, ttl)
            if n % cfg.chunk_size == 0:
                pipe.execute()
                pipe = client.pipeline(transaction=False)
        pipe.execute()

    with_retries(refresh, cfg, "rollback TTL refresh")
    old = flip_pointer(client, target, cfg)
    log.info("rolled back: live version %s (was %s)", target, old)
    return target, old or ""


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
