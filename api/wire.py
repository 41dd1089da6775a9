"""A lookup's one round trip, packed by hand and parsed in one pass (issue #18).

Profiling the lookup path (``benchmarks/api_profile.py``) showed redis-py's pipeline spending
about 10 us of CPU per command on a 2-core host: building each command's argument list, packing
it, and reading each reply under its own ``asyncio`` timeout. A lookup pipeline holds one
``HGET`` per user (more with a tail or reasons) plus the pointer ``GET`` and the A/B ``HMGET``,
so that per-command cost, not Redis, bounded the service.

:class:`Wire` sends the same commands (the Redis protocol, byte for byte what redis-py would
send) in one write on a connection of the client's own pool, and drains every reply from
hiredis' reader in one loop under one timeout (about 0.3 us a reply). Connecting, ``AUTH``,
TLS, ``SELECT``, the retry policy and the pool all stay redis-py's. Reading the replies uses
the connection's hiredis parser directly (``Connection._parser``): :func:`Wire.for_client`
checks that the client is a plain ``redis.asyncio.Redis`` whose connections are redis-py's
own; anything else (a cluster, ``fakeredis``, a wrapper) gets ``None`` and the caller uses
redis-py's pipeline, which sends the same commands. A connection whose parser is not hiredis
is read with the public ``read_response``, one reply at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_NOT_ENOUGH_DATA: Any = None
_HiredisParser: Any = None
_Push: Any = None
try:  # the sentinel redis-py's hiredis parser hands to hiredis.Reader(notEnoughData=...)
    from redis._parsers import hiredis as _redis_hiredis

    _NOT_ENOUGH_DATA = _redis_hiredis.NOT_ENOUGH_DATA
    _HiredisParser = _redis_hiredis._AsyncHiredisParser
except (ImportError, AttributeError):  # pragma: no cover - another layout: public reads only
    pass
try:
    import hiredis

    _Push = getattr(hiredis, "PushNotification", None)  # hiredis >= 3.2 (RESP3 pushes)
except ImportError:  # pragma: no cover - no hiredis: redis-py's own parser, public reads
    pass

_STANDARD_CONNECTIONS = (Connection, SSLConnection, UnixDomainSocketConnection)
_HGET = b"*3\r\n$4\r\nHGET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"


def pack_hget(key: bytes, field: bytes) -> bytes:
    """``HGET key field`` in the Redis protocol."""
    return _HGET % (len(key), key, len(field), field)


def pack(*args: bytes) -> bytes:
    """Any command of byte-string arguments in the Redis protocol."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class Wire:
    """Sends packed commands on one pooled connection and reads all their replies.

    Connections are taken from the client's pool and kept between round trips (one per
    round trip in flight), so a lookup does not pay the pool's lock and bookkeeping; the
    client's ``aclose`` closes them with the pool. A connection that failed, was cancelled
    mid-read, or asks to reconnect goes back to the pool disconnected.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.pool = client.connection_pool
        self._idle: list[Any] = []

    @classmethod
    def for_client(cls, client: Any) -> Wire | None:
        """A wire for ``client``, or None when it is not a plain redis-py asyncio client
        (a cluster client, ``fakeredis``, a test double): use redis-py's pipeline then."""
        if not isinstance(client, aioredis.Redis):
            return None
        pool = getattr(client, "connection_pool", None)
        if pool is None or getattr(pool, "connection_class", None) not in _STANDARD_CONNECTIONS:
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
        conn = self._idle.pop() if self._idle else await self.pool.get_connection()
        try:
            values = await conn.retry.call_with_retry(
                lambda: self._once(conn, packed, replies),
                lambda _error: conn.disconnect(),
            )
        except BaseException:
            await self._discard(conn)
            raise
        if getattr(conn, "should_reconnect", bool)():
            await self._discard(conn)
        else:
            self._idle.append(conn)
        for value in values:
            if isinstance(value, ResponseError):
                raise value
        return values

    async def _discard(self, conn: Any) -> None:
        """Give a connection back to the pool, disconnected (it may hold unread replies)."""
        try:
            await conn.disconnect(nowait=True)
        finally:
            await self.pool.release(conn)

    async def aclose(self) -> None:
        """Give the kept connections back to the pool."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await self.pool.release(conn)

    @staticmethod
    async def _once(conn: Any, packed: bytes, replies: int) -> list[Any]:
        await conn.send_packed_command(packed, check_health=False)
        parser = getattr(conn, "_parser", None)
        try:
            async with asyncio.timeout(conn.socket_timeout):
                if _HiredisParser is not None and type(parser) is _HiredisParser:
                    return await _drain(parser, replies)
                return [await conn.read_response() for _ in range(replies)]
        except TimeoutError:
            await conn.disconnect(nowait=True)
            msg = f"Timeout reading from {conn.host if hasattr(conn, 'host') else 'redis'}"
            raise RedisTimeoutError(msg) from None
        except OSError as exc:
            await conn.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while reading from redis: {exc}") from exc
        except BaseException:
            await conn.disconnect(nowait=True)
            raise


async def _drain(parser: Any, replies: int) -> list[Any]:
    """``replies`` replies from a redis-py hiredis parser, reading the socket as needed."""
    reader = parser._reader
    if reader is None:
        raise RedisConnectionError("Connection closed by server.")
    values: list[Any] = []
    gets = reader.gets
    while len(values) < replies:
        value = gets()
        if value is _NOT_ENOUGH_DATA:
            await parser.read_from_socket()
            continue
        if isinstance(value, RedisConnectionError):
            raise value
        if _Push is not None and isinstance(value, _Push):
            await parser.handle_push_response(value)  # RESP3 push: not one of ours
            continue
        values.append(value)
    return values
