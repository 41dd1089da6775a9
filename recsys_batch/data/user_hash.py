"""A stable hash of ``user_id`` and the user sample drawn with it.

The hash is SplitMix64's finaliser written as Polars integer arithmetic (wrapping ``UInt64``
multiplications, shifts as divisions by powers of two), so it is the same on every machine,
process, Polars version and run. Polars' own ``hash`` is seeded per version and documented as
unstable, hence not used. The shards (``run.sharding``) and the samples of the model (stage 1's
fit, the ranker's and the gate's users) are drawn from it.
"""

from __future__ import annotations

import polars as pl

from recsys_batch.data import columns as C

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def u64(value: int) -> pl.Expr:
    """``value`` as a ``UInt64`` literal."""
    return pl.lit(value, dtype=pl.UInt64)


def _xor_shift(z: pl.Expr, bits: int) -> pl.Expr:
    """``z ^ (z >> bits)`` on UInt64 (a right shift is a floor division by ``2**bits``)."""
    return z.xor(z // u64(1 << bits))


def user_hash(user: pl.Expr | str = C.USER) -> pl.Expr:
    """SplitMix64 of the user id (``UInt64``); stable across processes and versions.

    Negative ids are hashed through their two's-complement bits.

    Examples
    --------
    >>> pl.select(user_hash(pl.lit(1, dtype=pl.Int64))).item() == stable_hash(1)
    True
    """
    expr = pl.col(user) if isinstance(user, str) else user
    z = expr.cast(pl.Int64).reinterpret(signed=False) + u64(_GOLDEN)
    z = _xor_shift(z, 30) * u64(_MIX1)
    z = _xor_shift(z, 27) * u64(_MIX2)
    return _xor_shift(z, 31)


def stable_hash(user_id: int) -> int:
    """Pure-Python reference of :func:`user_hash` (used by tests and for one-off lookups)."""
    z = (user_id + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def sample_users(tx: pl.LazyFrame, n_users: int, max_users: int | None) -> pl.LazyFrame:
    """Rows of a stable hash sample of about ``max_users`` of ``n_users`` users (all when
    fewer, or when ``max_users`` is None).

    The top 32 bits of :func:`user_hash` are uniform: a user is kept when they fall below
    the share, so the sample is the same from run to run and nested as it grows.
    """
    if max_users is None or n_users <= max_users:
        return tx
    threshold = int(max_users / n_users * 2**32)
    return tx.filter((user_hash() // (1 << 32)) < threshold)
