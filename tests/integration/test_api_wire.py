"""The lookup pipeline packed by hand (:mod:`api.wire`) against a real Redis (#18, #29).

The service answers from the same replies whichever way the pipeline travels: packed by hand
and read with redis-py's public ``read_response`` under one timeout (the default on a plain
``redis.asyncio`` client), or through redis-py's own pipeline (``fakeredis``, a cluster). Each
round trip borrows a connection of the client's pool and gives it back: a failed, timed-out
or server-closed connection is never used again as it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

import polars as pl
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api import wire
from api.redis_client import client_options
from api.service import Lookup
from recsys_batch.config import RedisConfig
from recsys_batch.data import columns as C
from tests.publishing import publish_lists

pytestmark = pytest.mark.integration

USERS = {u: [100 * u + j for j in range(20)] for u in range(1, 61)}
POPULAR = [9000 + j for j in range(20)]


@pytest.fixture
def published(redis_url: str, real_redis: redis.Redis, key_prefix: str) -> str:
    rows = [
        (user, item, rank + 1, "r3.4" if rank % 2 else "b")
        for user, items in USERS.items()
        for rank, item in enumerate(items)
    ]
    schema = {C.USER: pl.Int64, C.ITEM: pl.Int64, C.RANK: pl.Int32, "reason": pl.String}
    recs = pl.DataFrame(rows, schema=schema, orient="row").with_columns(pl.lit(1.0).alias(C.SCORE))
    cfg = RedisConfig(url=redis_url, key_prefix=key_prefix)
    return publish_lists(real_redis, recs, POPULAR, None, cfg)


async def answers_of(lookup: Lookup) -> list[Any]:
    """A mix of lookups, concurrent and batched, with tails, exclusions and reasons."""
    singles = await asyncio.gather(
        *(lookup.one(u, 5) for u in (1, 2, 3, 999, 4, 1)),
        lookup.one(5, 20),
        lookup.one(6, 5, [601, 602, 9000]),
        lookup.one(7, 3, explain=True),
        lookup.one(998, 4, [9001], explain=True),
    )
    users = list(range(1, 70))
    _, batch = await lookup.many(users, 18, [[u * 100] for u in users], explain=True)
    found = [(live.version, a.items, a.source, a.fallback_items, a.reasons) for live, a in singles]
    return found + [(a.items, a.source, a.fallback_items, a.reasons) for a in batch]


def run_with(redis_url: str, make: Any) -> list[Any]:
    async def go() -> list[Any]:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=2.0)
        try:
            return await answers_of(make(client))
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_wire_answers_like_redis_pipeline(redis_url: str, key_prefix: str, published: str) -> None:
    def with_wire(client: Any) -> Lookup:
        lookup = Lookup(client, key_prefix, 60.0, coalesce=True)
        assert lookup.wire is not None
        return lookup

    def with_pipeline(client: Any) -> Lookup:
        lookup = Lookup(client, key_prefix, 60.0, coalesce=True)
        lookup.wire = None
        return lookup

    fast = run_with(redis_url, with_wire)
    slow = run_with(redis_url, with_pipeline)
    assert fast == slow
    assert fast[0][1:3] == (USERS[1][:5], "personal")
    assert fast[3][2] == "fallback"


def one_connection_client(redis_url: str, timeout: float = 2.0, **options: Any) -> aioredis.Redis:
    """A client with the API's options (:func:`api.redis_client.client_options`: one immediate
    retry) whose pool holds one connection: a round trip that kept its connection instead of
    giving it back makes the next one fail ("Too many connections")."""
    api_options = client_options(RedisConfig(url=redis_url), redis_url, timeout)
    return aioredis.Redis.from_url(redis_url, max_connections=1, **{**api_options, **options})


def test_error_reply_is_raised_and_the_connection_stays_in_step(
    redis_url: str, real_redis: redis.Redis, key_prefix: str
) -> None:
    """Mutations: raising at the first error reply (the second reply is then read as the
    next round trip's), or not giving the connection back to the pool after an error."""
    real_redis.set(f"{key_prefix}:s", "x")
    real_redis.hset(f"{key_prefix}:h", "f", "v")

    async def go() -> tuple[str, Any]:
        client = one_connection_client(redis_url)
        try:
            link = wire.Wire.for_client(client)
            assert link is not None
            packed = wire.pack_hget(f"{key_prefix}:s".encode(), b"f") + wire.pack_hget(
                f"{key_prefix}:h".encode(), b"f"
            )
            with pytest.raises(ResponseError) as caught:
                await link.exchange(packed, 2)
            again = await link.exchange(wire.pack(b"GET", f"{key_prefix}:s".encode()), 1)
            return str(caught.value), again
        finally:
            await client.aclose()

    message, again = asyncio.run(go())
    assert "WRONGTYPE" in message
    assert again == [b"x"]


def test_a_timed_out_round_trip_never_answers_the_next(
    redis_url: str, real_redis: redis.Redis, key_prefix: str
) -> None:
    """A reply that comes after its round trip timed out must never be read as another
    round trip's (a wrong answer). ``BLPOP`` replies nil after 0.5 s, past the 0.3 s timeout.
    Mutation: a timed-out connection left connected (no disconnect by ``read_response``, the
    retry or :meth:`Wire.exchange`): the retry or the next ``GET`` reads that late nil."""
    real_redis.set(f"{key_prefix}:s", "x")
    blocked = wire.pack(b"BLPOP", f"{key_prefix}:empty".encode(), b"0.5")

    async def go() -> list[Any]:
        client = one_connection_client(redis_url, timeout=0.3)
        try:
            link = wire.Wire.for_client(client)
            assert link is not None
            with pytest.raises(RedisTimeoutError):
                await link.exchange(blocked, 1)
            return await link.exchange(wire.pack(b"GET", f"{key_prefix}:s".encode()), 1)
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [b"x"]


def test_idle_connection_closed_by_the_server_is_reconnected_by_the_pool(
    redis_url: str, real_redis: redis.Redis, key_prefix: str
) -> None:
    """An idle connection the server closed (as a Redis restart does) is replaced before
    its next round trip, without needing the retry: the client here retries nothing.
    Mutation: keeping idle connections outside redis-py's pool (no check before reuse)
    fails the round trip after the kill with a ``ConnectionError``."""
    real_redis.set(f"{key_prefix}:s", "x")
    client_id = wire.pack(b"CLIENT", b"ID")

    async def go() -> tuple[int, int, list[Any]]:
        client = one_connection_client(redis_url, retry=Retry(NoBackoff(), 0))
        try:
            link = wire.Wire.for_client(client)
            assert link is not None
            (first,) = await link.exchange(client_id, 1)
            await asyncio.to_thread(real_redis.client_kill_filter, _id=first)
            got = await link.exchange(wire.pack(b"GET", f"{key_prefix}:s".encode()), 1)
            (second,) = await link.exchange(client_id, 1)
            return first, second, got
        finally:
            await client.aclose()

    first, second, got = asyncio.run(go())
    assert got == [b"x"]
    assert second != first  # a new connection, not the killed one


def test_not_for_test_doubles_or_clusters() -> None:
    import fakeredis  # noqa: PLC0415

    assert wire.Wire.for_client(fakeredis.FakeAsyncRedis()) is None
    assert wire.Wire.for_client(object()) is None
    decoded = aioredis.Redis(decode_responses=True)
    assert wire.Wire.for_client(decoded) is None


def test_pack_matches_redis_py() -> None:
    from redis.asyncio.connection import Connection  # noqa: PLC0415

    conn = Connection()
    assert wire.pack_hget(b"P:v:V:u:3", b"42") == b"".join(
        conn.pack_command("HGET", b"P:v:V:u:3", b"42")
    )
    assert wire.pack_hgets(b"P:v:V:", (b"u", b"t", b"r", b"n"), b":3", b"42") == b"".join(
        b"".join(conn.pack_command("HGET", b"P:v:V:" + family + b":3", b"42"))
        for family in (b"u", b"t", b"r", b"n")
    )
    assert wire.pack(b"HMGET", b"P:ab", b"version", b"share") == b"".join(
        conn.pack_command("HMGET", b"P:ab", b"version", b"share")
    )
