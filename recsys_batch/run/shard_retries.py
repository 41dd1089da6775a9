"""What a failed shard ends the run with, for both executors (issue #29).

Only a shard whose Redis connection failed (:data:`PUBLISH_FAILURES`) is retried (HSET is
idempotent, so a repeated write is harmless); if it still fails, :class:`ShardError` (exit 4)
is raised. A ``RecsysError`` keeps its type and exit code, and any other exception is a bug
that propagates as it is (:func:`run_ends`).
"""

from __future__ import annotations

import logging

import redis

from recsys_batch.errors import PublishError, RecsysError
from recsys_batch.publish import store

log = logging.getLogger(__name__)


class ShardError(PublishError):
    """A shard still failed after its retries; nothing was flipped (exit 4, as a publish)."""


PUBLISH_FAILURES: tuple[type[BaseException], ...] = (redis.RedisError, *store.RETRYABLE)
"""What a shard may raise that is a failed publish, worth another attempt of the shard: a
Redis error that escaped the writer's own retries, or a broken connection or timeout."""


def run_ends(shard: int, attempt: int, retries: int, exc: BaseException) -> BaseException | None:
    """What ``exc``, raised by attempt ``attempt`` of ``shard``, ends the run with; None to retry.

    A ``RecsysError`` ends it at once with its own type and exit code: bad data or config is
    the same on every attempt, and a ``PublishError`` means Redis failed after its own
    retries (``redis.retries``): retrying the shard on top would multiply the time a frozen
    Redis holds the batch. A :data:`PUBLISH_FAILURES` error is retried ``retries`` times,
    then ends the run as a :class:`ShardError`. Anything else is a bug and ends it as it is.
    """
    if isinstance(exc, RecsysError) or not isinstance(exc, PUBLISH_FAILURES):
        return exc
    if attempt > retries:
        return shard_failed(shard, attempt, exc)
    log.warning("shard %d failed (%s: %s), retrying", shard, type(exc).__name__, exc)
    return None


def shard_failed(shard: int, attempts: int, exc: BaseException) -> ShardError:
    """The :class:`ShardError` of ``shard`` after ``attempts`` attempts that ended in ``exc``."""
    msg = (
        f"shard {shard} failed after {attempts} attempt(s): {type(exc).__name__}: {exc}; "
        "nothing was flipped, the live version keeps serving"
    )
    return ShardError(msg)
