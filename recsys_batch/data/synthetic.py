"""Seeded synthetic grocery data with the shape of the bundled "The Complete Journey" data.

What it imitates (bundled figures for ~2,500 households in brackets):

- 53 weeks of baskets, ~64 baskets per user (lognormal, heavy tail) of ~9 lines each;
- item popularity following a power law over a large catalogue (92k products, most rarely
  bought), with each user buying mostly from a personal list of favourites (repeat purchases);
- departments of very different sizes (GROCERY and DRUG GM hold most products; a dozen
  departments have fewer than 150 products);
- unit prices around 2 (lognormal), half the lines discounted, rare coupons, a home store per
  user, quantity 0 for weighed goods (~0.6% of lines);
- demographics for about a third of the users.

Everything is vectorised with numpy, one chunk of ``CHUNK_USERS`` users at a time, so 100x
the bundled data (250,000 users, ~150M lines) streams to parquet parts in bounded memory.
The same ``(users, seed)`` always gives identical data.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys_batch.data import columns as C
from recsys_batch.data import synthetic_plans
from recsys_batch.data.synthetic_catalogue import (
    Catalogue,
    generate_items,
    generate_users,
    seeded,
)
from recsys_batch.errors import DataError

log = logging.getLogger(__name__)

CHUNK_USERS = 5_000
"""Users generated (and written as one parquet part) at a time; the data depends on it."""
SYNTH_TRANSACTIONS = "transactions"  # folder of parquet parts
SYNTH_ITEMS = "items.parquet"
SYNTH_USERS = "users.parquet"
N_WEEKS = 53
N_DAYS = N_WEEKS * 7
FORMAT_VERSION = 1
FAVOURITES = 120
"""Median length of a user's list of favourites (repeat purchases)."""
QUANTITY_VALUES = (0, 1, 2, 3, 4, 5, 6, 8, 10)
QUANTITY_SHARES = (0.006, 0.7985, 0.144, 0.026, 0.0155, 0.0045, 0.0035, 0.001, 0.001)
"""Line quantities as in the bundled data; 0 is a weighed good (priced as one unit)."""


@dataclass(frozen=True)
class Synthetic:
    """Generated canonical frames (schemas ``TRANSACTIONS``, ``ITEMS``, ``USERS``)."""

    transactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame


def n_stores_for(users: int) -> int:
    """Number of stores: about the bundled 457 at 2,500 users, bounded both ways."""
    return int(np.clip(users // 5, 20, 1_500))


def _draw(cdf: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Indices drawn with the probabilities whose cumulative sum is ``cdf``."""
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


@dataclass(frozen=True)
class _Shoppers:
    """Per-user draws of one chunk: activity, span of days, basket size, favourites, store."""

    baskets: np.ndarray
    start: np.ndarray
    end: np.ndarray
    size_scale: np.ndarray
    n_fav: np.ndarray
    fav_share: np.ndarray
    home: np.ndarray
    fav_offset: np.ndarray
    """Where each user's favourites start in ``favourites``."""
    favourites: np.ndarray
    """Every user's personal list of item indices, drawn from the global power law."""


@dataclass(frozen=True)
class _Stores:
    ids: np.ndarray
    cdf: np.ndarray


@dataclass(frozen=True)
class _Baskets:
    owner: np.ndarray
    day: np.ndarray
    store: np.ndarray
    trans_time: np.ndarray
    lines: np.ndarray


def _stores(n_stores: int) -> _Stores:
    """Store ids from 300 with a power-law share of the visits."""
    cdf = np.cumsum(np.arange(1, n_stores + 1, dtype=np.float64) ** -0.9)
    cdf /= cdf[-1]
    return _Stores(300 + np.arange(n_stores, dtype=np.int64), cdf)


def _shoppers(
    rng: np.random.Generator, n_users: int, catalogue: Catalogue, stores: _Stores
) -> _Shoppers:
    """Draw the users of a chunk (the draw order is part of the seeded output)."""
    baskets = np.clip(np.round(rng.lognormal(np.log(43), 0.9, n_users)), 1, 900).astype(np.int64)
    late = rng.random(n_users) < 0.12
    start = np.where(
        late, rng.integers(1, N_DAYS - 30, n_users), 1 + rng.exponential(12, n_users).astype(int)
    )
    start = np.minimum(start, N_DAYS - 7)
    churn = rng.random(n_users) < 0.08
    end = np.where(churn, rng.integers(start + 7, N_DAYS + 1), N_DAYS)
    size_scale = rng.lognormal(np.log(5.2), 0.45, n_users)
    n_fav = np.clip(np.round(rng.lognormal(np.log(FAVOURITES), 0.6, n_users)), 5, 400).astype(
        np.int64
    )
    fav_share = rng.beta(5, 4, n_users)
    home = stores.ids[_draw(stores.cdf, rng, n_users)]
    fav_offset = np.concatenate(([0], np.cumsum(n_fav)[:-1]))
    favourites = _draw(catalogue.cdf, rng, int(n_fav.sum()))
    return _Shoppers(
        baskets, start, end, size_scale, n_fav, fav_share, home, fav_offset, favourites
    )


def _baskets(rng: np.random.Generator, users: _Shoppers, stores: _Stores) -> _Baskets:
    """Draw every basket's owner, day, store, time and number of lines, by owner and day."""
    owner = np.repeat(np.arange(len(users.baskets)), users.baskets)
    n_baskets = len(owner)
    span = (users.end - users.start + 1)[owner]
    day = users.start[owner] + (rng.random(n_baskets) * span).astype(np.int64)
    order = np.lexsort((day, owner))
    owner, day = owner[order], day[order]
    store = np.where(
        rng.random(n_baskets) < 0.8,
        users.home[owner],
        stores.ids[_draw(stores.cdf, rng, n_baskets)],
    )
    hour = np.clip(np.round(rng.normal(15.5, 3.5, n_baskets)), 0, 23).astype(np.int32)
    trans_time = hour * 100 + rng.integers(0, 60, n_baskets, dtype=np.int32)
    lines = np.clip(np.round(rng.lognormal(np.log(users.size_scale[owner]), 0.9)), 1, 160).astype(
        np.int64
    )
    return _Baskets(owner, day, store, trans_time, lines)


def _line_prices(
    rng: np.random.Generator, unit_price: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw each line's quantity, sales value and discounts: ``quantity, sales, retail_disc,
    coupon, coupon_match``."""
    n_lines = len(unit_price)
    quantity = rng.choice(np.array(QUANTITY_VALUES), size=n_lines, p=QUANTITY_SHARES)
    unit = unit_price * rng.lognormal(0.0, 0.08, n_lines)
    full = unit * np.maximum(quantity, 1)
    discounted = rng.random(n_lines) < 0.5
    retail_disc = np.where(discounted, np.round(full * rng.uniform(0.05, 0.35, n_lines), 2), 0.0)
    sales = np.round(np.maximum(full - retail_disc, 0.01), 2)
    coupon = np.where(
        rng.random(n_lines) < 0.015,
        np.round(np.minimum(rng.uniform(0.25, 3, n_lines), sales), 2),
        0,
    )
    coupon_match = np.where(
        rng.random(n_lines) < 0.007, np.round(rng.uniform(0.1, 0.6, n_lines), 2), 0
    )
    return quantity, sales, retail_disc, coupon, coupon_match


def generate_chunk(
    chunk: int, first_user: int, n_users: int, catalogue: Catalogue, n_stores: int, seed: int
) -> pl.DataFrame:
    """Transactions of users ``first_user .. first_user + n_users - 1`` (schema ``TRANSACTIONS``).

    ``basket_id`` is unique within the chunk; :func:`iter_chunks` offsets it across chunks.
    """
    rng = seeded(seed, 1, chunk)
    stores = _stores(n_stores)
    users = _shoppers(rng, n_users, catalogue, stores)
    baskets = _baskets(rng, users, stores)

    # Lines: favourite (skewed to the top of the user's list) or anything popular.
    basket_of = np.repeat(np.arange(len(baskets.owner)), baskets.lines)
    user_of = baskets.owner[basket_of]
    n_lines = len(basket_of)
    from_fav = rng.random(n_lines) < users.fav_share[user_of]
    fav_rank = (rng.random(n_lines) ** 1.8 * users.n_fav[user_of]).astype(np.int64)
    fav_pick = users.fav_offset[user_of] + fav_rank
    item_idx = np.where(from_fav, users.favourites[fav_pick], _draw(catalogue.cdf, rng, n_lines))
    quantity, sales, retail_disc, coupon, coupon_match = _line_prices(
        rng, catalogue.price[item_idx]
    )

    line_day = baskets.day[basket_of]
    return pl.DataFrame(
        {
            C.USER: (first_user + user_of).astype(np.int64),
            C.BASKET: basket_of.astype(np.int64),
            C.DAY: line_day.astype(np.int32),
            C.ITEM: catalogue.item_ids[item_idx],
            C.QTY: quantity.astype(np.int64),
            C.SALES: sales,
            C.STORE: baskets.store[basket_of].astype(np.int64),
            C.RETAIL_DISC: retail_disc,
            C.TRANS_TIME: baskets.trans_time[basket_of].astype(np.int32),
            C.WEEK: ((line_day - 1) // 7 + 1).astype(np.int32),
            C.COUPON_DISC: coupon.astype(np.float64),
            C.COUPON_MATCH_DISC: coupon_match.astype(np.float64),
        },
        schema=C.TRANSACTIONS,
    )


BASKET_ID_START = 26_984_851_472
"""First basket id (same order of magnitude as the bundled ids)."""


def iter_chunks(users: int, seed: int, catalogue: Catalogue) -> Iterator[pl.DataFrame]:
    """Transactions of users ``1..users``, ``CHUNK_USERS`` users per frame, in user order."""
    n_stores = n_stores_for(users)
    next_basket = BASKET_ID_START
    for chunk, first in enumerate(range(0, users, CHUNK_USERS)):
        n = min(CHUNK_USERS, users - first)
        frame = generate_chunk(chunk, first + 1, n, catalogue, n_stores, seed)
        frame = frame.with_columns(pl.col(C.BASKET) + next_basket)
        next_basket = int(frame.select(pl.col(C.BASKET).max()).item() or next_basket) + 1
        yield frame


def generate(users: int = 2_500, seed: int = 42) -> Synthetic:
    """All synthetic data in memory (fine up to some tens of thousands of users)."""
    _check_users(users)
    items, catalogue = generate_items(users, seed)
    transactions = pl.concat(list(iter_chunks(users, seed, catalogue)), rechunk=True)
    return Synthetic(transactions, items, generate_users(users, seed))


def plan_inputs(users: int, seed: int) -> synthetic_plans.CalendarInputs:
    """The catalogue and stores the plan tables of ``users`` users are drawn from."""
    _check_users(users)
    catalogue, stores = generate_items(users, seed)[1], _stores(n_stores_for(users)).ids
    return synthetic_plans.CalendarInputs(
        catalogue.item_ids, catalogue.cdf, stores, users, N_WEEKS, seed
    )


def _check_users(users: int) -> None:
    if users < 1:
        msg = f"the number of synthetic users must be at least 1, got {users}"
        raise ValueError(msg)


def write_synthetic(out_dir: Path, users: int, seed: int, *, overwrite: bool = False) -> dict:
    """Write synthetic data as parquet: transactions parts, items, users, plans, manifest.

    Parameters
    ----------
    out_dir
        Created if needed. Read it back with ``--source synthetic --path out_dir``.
    users
        Number of users (2,500 is the size of the bundled data).
    seed
        Same seed and users -> byte-for-byte identical frames.
    overwrite
        Replace the parts of an earlier run in ``out_dir``; without it an existing run is an error.

    Returns
    -------
    dict
        The manifest (users, seed, rows, items, parts, plan rows by table, seconds), also
        written as manifest.json.

    Raises
    ------
    DataError
        ``out_dir`` already holds synthetic data and ``overwrite`` is false.
    """

    _check_users(users)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    tx_dir = out_dir / SYNTH_TRANSACTIONS
    old_parts = sorted(tx_dir.glob("part-*.parquet")) if tx_dir.is_dir() else []
    if old_parts and not overwrite:
        msg = f"the output folder already holds {len(old_parts)} synthetic part(s)"
        raise DataError(
            msg,
            file=str(tx_dir),
            column=", ".join(C.TRANSACTIONS.names()),
            fix="pass --overwrite to replace them, or choose another --out",
        )
    for part in old_parts:
        part.unlink()
    tx_dir.mkdir(parents=True, exist_ok=True)

    items, catalogue = generate_items(users, seed)
    items.write_parquet(out_dir / SYNTH_ITEMS)
    generate_users(users, seed).write_parquet(out_dir / SYNTH_USERS)
    rows = parts = 0
    for parts, frame in enumerate(iter_chunks(users, seed, catalogue), start=1):
        frame.write_parquet(tx_dir / f"part-{parts - 1:05d}.parquet")
        rows += frame.height
        log.info("synth: part %d, %d rows so far", parts, rows)
    plan_rows = synthetic_plans.write_plans(out_dir, plan_inputs(users, seed))
    manifest = {
        "format_version": FORMAT_VERSION,
        "users": users,
        "seed": seed,
        "rows": rows,
        "items": items.height,
        "parts": parts,
        "chunk_users": CHUNK_USERS,
        "plans": plan_rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
