"""Write one shard's recommendations into a version: the one writer of user keys.

:func:`write_users` is called once per shard by the nightly run (an in-memory run is one
shard). It writes every user's list as ``P:v:V:u:{user_id}`` (format: :mod:`keys`) with the
version's safety TTL, then counts the keys back with ``EXISTS`` and returns that count, so a
lost write fails the shard instead of the night at the end.

On a single server the ``SET`` commands of a chunk of ``cfg.chunk_size`` users are encoded by
Polars straight into the Redis protocol (RESP) and sent in one buffer; the next chunk is
encoded while Redis executes the previous one, and the ``+OK`` replies are checked in one
comparison. A Redis Cluster or a test double (fakeredis) goes through redis-py's ordinary
pipelines instead. A failed round trip is retried with backoff (:func:`store.with_retries`);
``SET`` is idempotent, so resending an applied chunk is harmless.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import polars as pl
import redis

from recsys_batch.config import RedisConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import PublishError
from recsys_batch.publish import keys
from recsys_batch.publish.store import RETRYABLE, Client, is_cluster, with_retries

VALUE = "value"
_REAL_CONNECTIONS = (
    redis.connection.Connection,
    redis.connection.SSLConnection,
    redis.connection.UnixDomainSocketConnection,
)


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


def chunks(height: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, height, max(1, size)):
        yield start, min(size, height - start)


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
    values: Iterator[pl.DataFrame],
    key_prefix: str,
    cfg: RedisConfig,
) -> list[bytes]:
    """Fast path: encode chunk i+1 while Redis executes chunk i (one connection).

    ``values`` yields one ``user_values`` frame per chunk (:func:`sorted_user_chunks`).
    Returns the ``EXISTS`` command of every chunk, built while waiting for Redis, for
    :func:`verify_raw`.
    """
    ttl = ttl_seconds(cfg)
    checks: list[bytes] = []
    pool = client.connection_pool
    # Connecting is retried and mapped to PublishError like every other round trip.
    conn = with_retries(pool.get_connection, cfg, "user write (connect)")
    reader = _OkReader(conn)
    pending: tuple[bytes, int] | None = None  # sent, replies not read yet
    try:
        for chunk in values:
            length = chunk.height
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
            except RETRYABLE:
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
            except RETRYABLE:
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
    return with_retries(lambda: integer_replies(client, checks), cfg, "verification")


def write_users_pipeline(
    client: Client, values: pl.DataFrame, key_prefix: str, cfg: RedisConfig
) -> None:
    """Portable path (Redis Cluster, fakeredis): redis-py pipelines of ``cfg.chunk_size``."""
    ttl = ttl_seconds(cfg)
    user_ids = values[C.USER].to_list()
    texts = values[VALUE].to_list()
    for start, length in chunks(len(user_ids), cfg.chunk_size):

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


def integer_replies(client: redis.Redis, payloads: list[bytes]) -> int:
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
    for start, length in chunks(names.len(), cfg.chunk_size):
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


def write_users(client: Client, version: str, recs: pl.DataFrame, cfg: RedisConfig) -> int:
    """Write the users of ``recs`` into ``version``; return how many of their keys exist.

    Parameters
    ----------
    recs
        Schema ``columns.RECOMMENDATIONS``: each user's top k, rank 1 = best.

    Raises
    ------
    PublishError
        Redis failed after the retries or refused a write (out of memory, ACL).
    ValueError
        A negative user id or a repeated (user, rank) pair.
    """
    if recs.height == 0:
        return 0
    prefix = keys.version_prefix(version, cfg.key_prefix) + "u:"
    if fast_path_ok(client):
        assert isinstance(client, redis.Redis)
        if recs[C.USER].min() < 0:  # type: ignore[operator]
            msg = "recommendations contain a negative user_id; keys are built from ids >= 0 only"
            raise ValueError(msg)
        try:
            checks = write_users_raw(client, sorted_user_chunks(recs, cfg.chunk_size), prefix, cfg)
        except pl.exceptions.ComputeError as exc:
            msg = "recommendations repeat a (user_id, rank) pair; expected ranks 1..k per user"
            raise ValueError(msg) from exc
        return verify_raw(client, checks, cfg)
    values = user_values(recs)
    write_users_pipeline(client, values, prefix, cfg)
    return count_existing(client, user_keys(prefix, values[C.USER]), cfg)


def user_keys(user_prefix: str, user_ids: pl.Series) -> pl.Series:
    """The key of every user id: ``user_prefix`` (``P:v:V:u:``) + id."""
    return pl.select(pl.lit(user_prefix) + user_ids.cast(pl.String)).to_series()
