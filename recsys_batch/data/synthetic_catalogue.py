"""The item and user tables of the synthetic data (see :mod:`recsys_batch.data.synthetic`).

Items: a large catalogue over departments of very different sizes, a power-law popularity in a
random order of the ids, lognormal unit prices. Users: demographics for about a third of them.
Each table draws from its own random stream of the seed (:func:`seeded`: items 0, users 2;
the transactions use 1 and the plans 3-6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys_batch.data import columns as C

POPULARITY_EXPONENT = 2.4
"""Item purchase probability is proportional to rank ** -exponent (a power law)."""
POPULARITY_OFFSET = 3500
STAPLE_BOOST = 10.0
"""Extra weight of the few staples (milk, bananas) at the head of the power law."""

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
DEMOGRAPHICS_SHARE = 0.32
"""Share of users with a row in the users table (801 of 2,500 in the bundled data)."""


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


def seeded(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """Independent generator per (seed, stream, index): chunks never share random numbers."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def generate_items(users: int, seed: int) -> tuple[pl.DataFrame, Catalogue]:
    """Item table and the popularity/price arrays used to draw purchases."""
    rng = seeded(seed, 0)
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
    rng = seeded(seed, 2)
    ids = np.flatnonzero(rng.random(users) < DEMOGRAPHICS_SHARE).astype(np.int64) + 1
    data: dict[str, object] = {C.USER: ids}
    for column, (values, shares) in DEMOGRAPHIC_VALUES.items():
        p = np.asarray(shares) / np.sum(shares)
        picked = np.array(values, dtype=object)[rng.choice(len(values), len(ids), p=p)]
        data[column] = pl.Series(column, picked.tolist(), dtype=pl.String)
    return pl.DataFrame(data, schema=C.USERS)
