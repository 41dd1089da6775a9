"""A lookup's one round trip: commands packed by hand, replies read under one timeout (#18, #29).

A profile of the lookup path (``cProfile`` of an in-process ASGI loop against a real Redis)
showed redis-py's pipeline spending about 10 us of CPU per command on a 2-core host: building
each command's argument list, packing it, and reading each reply under its own ``asyncio``
timeout. A lookup pipeline holds one ``HGET`` per user (more with a tail or reasons) plus the
pointer ``GET`` and the A/B ``HMGET``, so that per-command cost, not Redis, bounded the service.

:class:`Wire` sends the same commands (the Redis protocol, byte for byte what redis-py would
send) in one write, and reads their replies under one timeout for the whole round trip. It
uses redis-py's public API only: a connection is taken from the client's pool for each round
trip and given back after it (``ConnectionPool.get_connection`` / ``release``, so the pool
checks an idle connection before reuse and reconnects one the server closed, e.g. after a
Redis restart), written with ``Connection.send_packed_command`` and read with
``Connection.read_response(timeout=math.inf)``: no timeout of its own per reply (redis-py >= 8.1
skips it; older releases arm one that never fires), the round trip's ``asyncio.timeout`` of
``socket_timeout`` bounds them all. Connecting, ``AUTH``, TLS, ``SELECT``, the retry policy
and the pool all stay redis-py's. A cluster client, ``fakeredis`` or a client decoding
replies to ``str`` gets no wire (:meth:`Wire.for_client` returns None) and the caller uses
redis-py's pipeline, which sends the same commands.
"""

from __future__ import annotations

import asyncio
import math
from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_REDIS_PY_CONNECTIONS = (Connection, SSLConnection, UnixDomainSocketConnection)
"""redis-py's own socket connections; a test double's (``fakeredis``) gets the pipeline."""
_HGET = b"*3\r\n$4\r\nHGET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"


def pack_hget(key: bytes, field: bytes) -> bytes:
    """``HGET key field`` in the Redis protocol."""
    return _HGET % (len(key), key, len(field), field)


@lru_cache(maxsize=32)
def _hgets(families: tuple[bytes, ...]) -> bytes:
    """The format of :func:`pack_hgets` for ``families`` (one byte each, none a ``%``)."""
    one = b"*3\r\n$4\r\nHGET\r\n$%%d\r\n%%b%b%%b\r\n$%%d\r\n%%b\r\n"
    return b"".join(one % family for family in families)


def pack_hgets(prefix: bytes, families: tuple[bytes, ...], suffix: bytes, field: bytes) -> bytes:
    """``HGET prefix+F+suffix field`` for each family ``F`` (one byte) in the Redis protocol:
    a user's field in several bucket hashes, packed in one step (a ruled lookup reads four)."""
    one = (len(prefix) + 1 + len(suffix), prefix, suffix, len(field), field)
    return _hgets(families) % (one * len(families))


def pack(*args: bytes) -> bytes:
    """Any command of byte-string arguments in the Redis protocol."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class Wire:
    """Sends packed commands on a connection of the client's pool and reads all their replies.

    Each round trip takes a connection from the client's pool and gives it back when its
    replies are read, so idle connections live in redis-py's pool, which checks each one
    as it hands it out (a socket the server closed is reconnected there) and closes them
    all with the client. A connection that failed or was cancelled mid-read is disconnected
    by redis-py before it goes back.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.pool = client.connection_pool

    @classmethod
    def for_client(cls, client: Any) -> Wire | None:
        """A wire for ``client``, or None when it is not a plain redis-py asyncio client on
        redis-py's own connections returning bytes (a cluster client, ``fakeredis``, a test
        double, a client with ``decode_responses``): use redis-py's pipeline then."""
        if not isinstance(client, aioredis.Redis):
            return None
        pool = getattr(client, "connection_pool", None)
        if pool is None or getattr(pool, "connection_class", None) not in _REDIS_PY_CONNECTIONS:
            return None
        if pool.connection_kwargs.get("decode_responses"):
            return None
        return cls(client)

    async def exchange(self, packed: bytes, replies: int) -> list[Any]:
        """Send ``packed`` (``replies`` commands) and return their replies, in order.

        An error reply raises its ``ResponseError`` once every reply was read (the
        connection stays in step). Connection errors and timeouts follow the client's
        retry policy (the API's: one immediate retry on a fresh connection).

        Raises
        ------
        redis.exceptions.RedisError
            An error reply, a connection error or a timeout (after the retry).
        """
        conn = await self.pool.get_connection()
        try:
            values = await conn.retry.call_with_retry(
                lambda: _once(conn, packed, replies),
                lambda _error: conn.disconnect(),
            )
        except BaseException:
            await conn.disconnect(nowait=True)  # it may hold unread replies
            raise
        finally:
            await self.pool.release(conn)
        for value in values:
            if isinstance(value, ResponseError):
                raise value
        return values


async def _once(conn: AbstractConnection, packed: bytes, replies: int) -> list[Any]:
    """One try: write ``packed`` and read ``replies`` replies, error replies included.

    ``read_response`` disconnects the connection itself when a read fails or is cancelled
    (the round trip's timeout cancels it), so a retry starts on a fresh socket.
    """
    await conn.send_packed_command(packed)  # health-checks first if the client asks to
    values: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            for _ in range(replies):
                try:
                    values.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:  # a whole reply: the rest are still to read
                    values.append(exc)
    except TimeoutError:
        msg = f"Timeout reading {replies} replies from redis"
        raise RedisTimeoutError(msg) from None
    return values
