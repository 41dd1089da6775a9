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
from recsys_batch.errors import DataError

log = logging.getLogger(__name__)

CHUNK_USERS = 5_000
SYNTH_TRANSACTIONS = "transactions"  # folder of parquet parts
SYNTH_ITEMS = "items.parquet"
SYNTH_USERS = "users.parquet"
"""Users generated (and written as one parquet part) at a time; the data depends on it."""
N_WEEKS = 53
N_DAYS = N_WEEKS * 7
FORMAT_VERSION = 1
POPULARITY_EXPONENT = 2.4
POPULARITY_OFFSET = 3500
FAVOURITES = 120
STAPLE_BOOST = 10.0
"""Extra weight of the few staples (milk, bananas) at the head of the power law."""
"""Median length of a user's list of favourites (repeat purchases)."""
"""Item purchase probability is proportional to rank ** -exponent (a power law)."""

# (department, share of products, popularity multiplier, price multiplier)
DEPARTMENTS: tuple[tuple[str, float, float, float], ...] = (
    ("GROCERY", 0.4235, 1.6, 1.0),
    ("DRUG GM", 0.3423, 0.25, 1.8),
    ("PRODUCE", 0.0338, 3.0, 0.9),
    ("COSMETICS", 0.0327, 0.2, 2.2),
    ("NUTRITION", 0.0316, 0.5, 1.6),
    ("MEAT", 0.0276, 1.5, 2.5),
    ("MEAT-PCKGD", 0.0263, 1.8, 1.6),
    ("DELI", 0.0256, 1.0, 1.5),
    ("PASTRY", 0.0233, 1.0, 1.0),
    ("FLORAL", 0.0102, 0.3, 3.0),
    ("MISCELLANEOUS", 0.0063, 0.8, 1.0),
    ("SEAFOOD-PCKGD", 0.0061, 0.6, 2.5),
    ("SPIRITS", 0.0041, 0.4, 5.0),
    ("SEAFOOD", 0.0040, 0.5, 3.0),
    ("GARDEN CENTER", 0.0014, 0.3, 3.0),
    ("RESTAURANT", 0.0011, 1.0, 1.5),
    ("SALAD BAR", 0.0005, 1.0, 1.5),
    ("COUPON", 0.0004, 0.5, 1.0),
    ("TRAVEL & LEISURE", 0.0003, 0.3, 2.0),
    ("FROZEN GROCERY", 0.0003, 1.0, 1.0),
    ("FUEL", 0.0002, 1.0, 8.0),
    ("CHEF SHOPPE", 0.0002, 0.5, 2.0),
    ("PHOTO & VIDEO", 0.0001, 0.3, 3.0),
    ("TOYS", 0.0001, 0.3, 3.0),
)
PACKAGE_SIZES = ("16 OZ", "12 OZ", "8 OZ", "6 OZ", "10 OZ", "750 ML", "15 OZ", "24 OZ", "32 OZ")

# Demographic categories and their shares among households with demographics.
DEMOGRAPHIC_VALUES: dict[str, tuple[tuple[str | None, ...], tuple[float, ...]]] = {
    C.AGE: (
        ("45-54", "35-44", "25-34", "65+", "55-64", "19-24"),
        (0.36, 0.24, 0.18, 0.09, 0.07, 0.06),
    ),
    C.INCOME: (
        ("50-74K", "35-49K", "75-99K", "25-34K", "15-24K", "Under 15K", "100-149K", "150K+"),
        (0.24, 0.21, 0.12, 0.10, 0.09, 0.08, 0.09, 0.07),
    ),
    C.HOME_OWNERSHIP: (
        ("Homeowner", None, "Renter", "Probable Homeowner", "Probable Renter"),
        (0.63, 0.29, 0.05, 0.015, 0.015),
    ),
    C.MARITAL_STATUS: (("Married", "Unmarried", None), (0.42, 0.41, 0.17)),
    C.HOUSEHOLD_SIZE: (("2", "1", "3", "5+", "4"), (0.40, 0.32, 0.13, 0.08, 0.07)),
    C.HOUSEHOLD_COMP: (
        ("2 Adults No Kids", "1 Adult No Kids", "2 Adults Kids", "1 Adult Kids"),
        (0.32, 0.32, 0.24, 0.12),
    ),
    C.KIDS_COUNT: (("0", "1", "3+", "2"), (0.64, 0.20, 0.085, 0.075)),
}
QUANTITY_VALUES = (0, 1, 2, 3, 4, 5, 6, 8, 10)
QUANTITY_SHARES = (0.006, 0.7985, 0.144, 0.026, 0.0155, 0.0045, 0.0035, 0.001, 0.001)
"""Line quantities as in the bundled data; 0 is a weighed good (priced as one unit)."""
DEMOGRAPHICS_SHARE = 0.32
"""Share of users with a row in the users table (801 of 2,500 in the bundled data)."""


@dataclass(frozen=True)
class Synthetic:
    """Generated canonical frames (schemas ``TRANSACTIONS``, ``ITEMS``, ``USERS``)."""

    transactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame


@dataclass(frozen=True)
class Catalogue:
    """Item arrays the transaction generator samples from."""

    item_ids: np.ndarray
    cdf: np.ndarray
    """Cumulative purchase probability over items (power law), last value 1."""
    price: np.ndarray


def n_items_for(users: int) -> int:
    """Catalogue size: about the bundled 92k products at 2,500 users, bounded both ways."""
    return int(np.clip(round(37 * users), 3_000, 120_000))


def n_stores_for(users: int) -> int:
    """Number of stores: about the bundled 457 at 2,500 users, bounded both ways."""
    return int(np.clip(users // 5, 20, 1_500))


def _seeded(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """Independent generator per (seed, stream, index): chunks never share random numbers."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def generate_items(users: int, seed: int) -> tuple[pl.DataFrame, Catalogue]:
    """Item table and the popularity/price arrays used to draw purchases."""
    rng = _seeded(seed, 0)
    n = n_items_for(users)
    item_ids = 25_000 + np.cumsum(rng.integers(1, 200, n))
    shares = np.array([d[1] for d in DEPARTMENTS])
    dept = rng.choice(len(DEPARTMENTS), size=n, p=shares / shares.sum())
    popularity_mult = np.array([d[2] for d in DEPARTMENTS])[dept]
    price_mult = np.array([d[3] for d in DEPARTMENTS])[dept]

    # Power law over a random order of the items: popularity is unrelated to the id.
    rank = rng.permutation(n) + 1
    base = (rank + POPULARITY_OFFSET) ** -POPULARITY_EXPONENT
    staples = STAPLE_BOOST * (1 + POPULARITY_OFFSET) ** -POPULARITY_EXPONENT / rank
    weight = (base + staples) * popularity_mult
    cdf = np.cumsum(weight)
    cdf /= cdf[-1]
    price = np.round(np.clip(rng.lognormal(np.log(2.0), 0.75, n) * price_mult, 0.05, 400.0), 2)

    category_no = (rng.random(n) ** 2 * 40).astype(np.int64)
    sub_no = rng.integers(0, 6, n)
    size_no = rng.integers(0, len(PACKAGE_SIZES), n)
    has_size = rng.random(n) < 0.67
    private = rng.random(n) < 0.3
    manufacturer = (rng.pareto(1.2, n) * 20).astype(np.int64) + 1
    department = pl.Series([d[0] for d in DEPARTMENTS], dtype=pl.String).gather(dept)
    category = department.str.slice(0, 5) + " CAT " + pl.Series(category_no).cast(pl.String)
    items = pl.DataFrame(
        {
            C.ITEM: item_ids.astype(np.int64),
            C.MANUFACTURER: manufacturer,
            C.DEPARTMENT: department,
            C.BRAND: pl.Series(["National", "Private"]).gather(private.astype(np.int64)),
            C.CATEGORY: category,
            C.SUB_CATEGORY: category + " / SUB " + pl.Series(sub_no).cast(pl.String),
            C.PACKAGE_SIZE: pl.Series(PACKAGE_SIZES, dtype=pl.String).gather(size_no),
        },
        schema=C.ITEMS,
    ).with_columns(pl.when(pl.Series(has_size)).then(pl.col(C.PACKAGE_SIZE)).alias(C.PACKAGE_SIZE))
    return items, Catalogue(item_ids.astype(np.int64), cdf, price)


def generate_users(users: int, seed: int) -> pl.DataFrame:
    """Demographics for about a third of users ``1..users`` (schema ``USERS``)."""
    rng = _seeded(seed, 2)
    ids = np.flatnonzero(rng.random(users) < DEMOGRAPHICS_SHARE).astype(np.int64) + 1
    data: dict[str, object] = {C.USER: ids}
    for column, (values, shares) in DEMOGRAPHIC_VALUES.items():
        p = np.asarray(shares) / np.sum(shares)
        picked = np.array(values, dtype=object)[rng.choice(len(values), len(ids), p=p)]
        data[column] = pl.Series(column, picked.tolist(), dtype=pl.String)
    return pl.DataFrame(data, schema=C.USERS)


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
    rng = _seeded(seed, 1, chunk)
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
