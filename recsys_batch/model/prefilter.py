"""Which items may be recommended tonight: the business rules of the catalogue.

The rules run in a fixed order and the funnel reports what is left after each one, so a
person can see which rule removed what. Every threshold lives in :class:`PrefilterConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from recsys_batch.config import PrefilterConfig
from recsys_batch.data import columns as C
from recsys_batch.data.frames import distinct_count
from recsys_batch.data.partitions import Location, remove, scan_part, write_parts
from recsys_batch.model.ids import ITEM_PART, item_part

RULES = ("all", "recent", "popularity", "department", "price", "top_n")
_ROWS = "rows"
_LAST_DAY = "last_day"
_MIN_PRICE = "min_unit_price"
_MAX_PRICE = "max_unit_price"

FUNNEL = pl.Schema({"rule": pl.String, "items": pl.UInt32, "users": pl.UInt32, _ROWS: pl.UInt32})


@dataclass(frozen=True)
class Prefiltered:
    """The catalogue (schema ``CATALOGUE``) and the funnel report (schema ``FUNNEL``)."""

    catalogue: pl.LazyFrame
    funnel: pl.LazyFrame


def unit_price() -> pl.Expr:
    """Price of one unit; a zero quantity (weighed goods) counts as one unit."""
    return pl.col(C.SALES) / pl.max_horizontal(pl.col(C.QTY), pl.lit(1))


def item_stats(transactions: pl.LazyFrame, n_users: int | None = None) -> pl.LazyFrame:
    """One row per item with everything the rules look at.

    ``n_users``: the users of all transactions when ``transactions`` holds only some items'
    lines (:func:`item_stats_in_parts`); None counts them here.
    """
    all_users = pl.col(C.USER).n_unique() if n_users is None else pl.lit(n_users)
    return (
        transactions.with_columns(unit_price().alias(C.UNIT_PRICE))
        .with_columns(all_users.alias("_n_users"))
        .group_by(C.ITEM)
        .agg(
            pl.col(C.QTY).sum().cast(pl.Int64).alias(C.QTY_SOLD),
            pl.col(C.USER).n_unique().cast(pl.UInt32).alias(C.BUYERS),
            (pl.col(C.USER).n_unique() / pl.col("_n_users").first()).alias(C.USER_SHARE),
            pl.col(C.UNIT_PRICE).median().alias(C.UNIT_PRICE),
            pl.col(C.UNIT_PRICE).min().alias(_MIN_PRICE),
            pl.col(C.UNIT_PRICE).max().alias(_MAX_PRICE),
            pl.col(C.DAY).max().alias(_LAST_DAY),
            pl.len().cast(pl.UInt32).alias(_ROWS),
        )
    )


ITEM_STATS_COLUMNS = (C.USER, C.ITEM, C.QTY, C.SALES, C.DAY)
"""The transaction columns :func:`item_stats` reads (the only ones the item parts hold)."""


def item_stats_in_parts(
    transactions: pl.LazyFrame,
    n_parts: int,
    n_users: int | None = None,
    *,
    folder: Location,
) -> pl.LazyFrame:
    """:func:`item_stats`, collected in ``n_parts`` parts of whole items (by item hash).

    Every item's lines are in one part, so the rows are those of one pass over every line,
    while the group-by holds one part at a time: its per-item user sets and prices (for the
    median) took 7.8 GB at 100x in one streaming pass (issue #17). One streaming pass writes
    the lines' :data:`ITEM_STATS_COLUMNS` to one parquet folder per part under ``folder``,
    then each part's file is read once: filtering every raw line once per part instead
    read them ``n_parts`` times, a count that grows with the lines (issue #28).

    Parameters
    ----------
    n_parts
        1 or less: :func:`item_stats` in one query (nothing written).
    n_users
        The users of ``transactions`` when known (the load stage counts them), else one
        more streaming pass.
    folder
        A folder of this call's own, on local disk (only this process reads it): emptied,
        then removed with everything under it when done, whatever the outcome.
    """
    if n_parts <= 1:
        return item_stats(transactions)
    if n_users is None:
        n_users = distinct_count(transactions, C.USER, "users").collect(engine="streaming").item()
    try:
        remove(folder)  # files a killed earlier call left would be read as this call's
        lines = transactions.select(ITEM_STATS_COLUMNS)
        write_parts(lines, item_part(n_parts), n_parts, folder)
        parts = [scan_part(folder, ITEM_PART, p) for p in range(n_parts)]
        return item_stats_of_parts(parts, n_users)
    finally:
        remove(folder)


def item_stats_of_parts(parts: list[pl.LazyFrame], n_users: int) -> pl.LazyFrame:
    """:func:`item_stats` of each part in turn, concatenated; ``parts`` hold whole items.

    Each part is collected before the next is read (only one part's group-by is in memory),
    so the result no longer depends on the parts' sources.
    """
    return pl.concat([item_stats(part, n_users).collect() for part in parts]).lazy()


def small_departments(items: pl.LazyFrame, cfg: PrefilterConfig) -> pl.LazyFrame:
    """Departments with fewer than ``min_department_items`` products in the item table."""
    return (
        items.filter(pl.col(C.DEPARTMENT).is_not_null())
        .group_by(C.DEPARTMENT)
        .agg(pl.col(C.ITEM).n_unique().alias("_products"))
        .filter(pl.col("_products") < cfg.min_department_items)
        .select(C.DEPARTMENT)
    )


def rule_flags(
    transactions: pl.LazyFrame,
    items: pl.LazyFrame | None,
    cfg: PrefilterConfig,
    stats: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Item stats plus one cumulative boolean column per rule: still in after that rule?

    ``stats``: :func:`item_stats` of ``transactions`` when already computed.
    """
    newest_day = transactions.select(pl.col(C.DAY).max().alias("_newest_day"))
    stats = (item_stats(transactions) if stats is None else stats).join(newest_day, how="cross")

    recent = pl.col(_LAST_DAY) > pl.col("_newest_day") - cfg.recent_days
    popular_ok = pl.col(C.USER_SHARE).is_between(cfg.min_user_share, cfg.max_user_share)
    if cfg.price_statistic == "median":
        priced_ok = pl.col(C.UNIT_PRICE).is_between(cfg.min_price, cfg.max_price)
    else:  # "any": one sale outside the range is enough to drop the item
        priced_ok = (pl.col(_MIN_PRICE) >= cfg.min_price) & (pl.col(_MAX_PRICE) <= cfg.max_price)

    if items is not None:
        small = small_departments(items, cfg).with_columns(pl.lit(True).alias("_small"))
        departments = items.select(C.ITEM, C.DEPARTMENT).unique(C.ITEM, keep="first")
        stats = stats.join(departments, on=C.ITEM, how="left").join(
            small, on=C.DEPARTMENT, how="left"
        )
        # Items absent from the item table have no department to judge: they stay.
        department_ok = pl.col("_small").is_null()
    else:
        department_ok = pl.lit(True)

    flagged = stats.with_columns(pl.lit(True).alias("all")).with_columns(
        recent.alias("recent"),
    )
    flagged = flagged.with_columns((pl.col("recent") & popular_ok).alias("popularity"))
    flagged = flagged.with_columns((pl.col("popularity") & department_ok).alias("department"))
    flagged = flagged.with_columns((pl.col("department") & priced_ok).alias("price"))
    # Top-N by quantity sold among the survivors; the item id breaks ties deterministically.
    # Failing items sort after every survivor, so the rank counts survivors only.
    order = pl.struct(~pl.col("price"), -pl.col(C.QTY_SOLD), pl.col(C.ITEM)).rank("ordinal")
    return flagged.with_columns((pl.col("price") & (order <= cfg.top_n)).alias("top_n"))


def prefilter(
    transactions: pl.LazyFrame,
    items: pl.LazyFrame | None,
    cfg: PrefilterConfig,
    stats: pl.LazyFrame | None = None,
) -> Prefiltered:
    """Apply the catalogue rules.

    Parameters
    ----------
    transactions
        Canonical transactions (schema ``TRANSACTIONS``) of the window the catalogue is
        computed on (never the test window).
    items
        Canonical item table, or None when the source has none (department rule skipped).
    stats
        :func:`item_stats` of ``transactions`` when already computed (out of core:
        :func:`item_stats_in_parts`); None computes them in the query.

    Returns
    -------
    Prefiltered
        ``catalogue``: the kept items, most sold first (schema ``CATALOGUE``); ``funnel``:
        items, users and transaction rows remaining after each rule in ``RULES``.
    """
    flags = rule_flags(transactions, items, cfg, stats)
    catalogue = (
        flags.filter(pl.col("top_n"))
        .sort([C.QTY_SOLD, C.ITEM], descending=[True, False])
        .select(
            pl.col(C.ITEM),
            pl.col(C.QTY_SOLD),
            pl.col(C.BUYERS),
            pl.col(C.USER_SHARE),
            pl.col(C.UNIT_PRICE),
        )
    )
    per_rule_items = flags.select(
        [pl.col(rule).sum().cast(pl.UInt32).alias(rule) for rule in RULES]
    )
    per_rule_rows_users = (
        transactions.select(C.USER, C.ITEM)
        .join(flags.select(C.ITEM, *RULES), on=C.ITEM)
        .select(
            *[pl.col(rule).sum().cast(pl.UInt32).alias(f"{rule}:rows") for rule in RULES],
            *[
                pl.col(C.USER)
                .filter(pl.col(rule))
                .n_unique()
                .cast(pl.UInt32)
                .alias(f"{rule}:users")
                for rule in RULES
            ],
        )
    )
    funnel = pl.concat(
        [
            per_rule_items.join(per_rule_rows_users, how="cross").select(
                pl.lit(rule).alias("rule"),
                pl.col(rule).alias("items"),
                pl.col(f"{rule}:users").alias("users"),
                pl.col(f"{rule}:rows").alias(_ROWS),
            )
            for rule in RULES
        ]
    )
    return Prefiltered(catalogue=catalogue, funnel=funnel)


def apply_catalogue(
    transactions: pl.LazyFrame, catalogue: pl.LazyFrame, cfg: PrefilterConfig
) -> pl.LazyFrame:
    """Map every purchase of a non-catalogue item to the placeholder item.

    The placeholder keeps baskets and users intact for features and ALS, but is never
    recommended.
    """
    in_catalogue = catalogue.select(C.ITEM, pl.lit(True).alias("_in"))
    return (
        transactions.join(in_catalogue, on=C.ITEM, how="left")
        .with_columns(
            pl.when(pl.col("_in"))
            .then(pl.col(C.ITEM))
            .otherwise(pl.lit(cfg.placeholder_item, dtype=pl.Int64))
            .alias(C.ITEM)
        )
        .drop("_in")
    )
