"""Seeded synthetic plan tables (issue #26), shaped like the bundled ones.

What it imitates (bundled figures in brackets):

- a promotion calendar for the busiest quarter of the stores [112 of 457 stores], each
  (store, week) promoting ~4% of the catalogue [3,642 of 92k products], an item-week's
  promotion reaching a few stores or many [median 3, mean 18 of 112], display and mailer
  codes with the bundled shares [57% not on display, 32% not in the mailer, never neither];
- 27 campaigns of three types [4 "Type A" sent to ~43% of households, 16 "Type B" and 7
  "Type C" to a few percent], 5 to 23 weeks long, a few starting before the data;
- coupons covering groups of related items, a few hundred per Type A campaign, a handful
  otherwise; redemptions by about a third of the recipients, inside the campaign's period.

The calendar covers exactly the data's weeks (1..53) and every campaign ends by the data's
last day, so nothing is planned past the data. Promotions are made one week at a time (one
parquet part each), so 100x the bundled size streams in bounded memory. Random streams 3 to 6
of the seed are used, so the transactions, items and users are the same as without plans.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys_batch.data import columns as C
from recsys_batch.data.plans import SYNTH_PLAN_FILES
from recsys_batch.data.tables import (
    CAMPAIGN_PERIODS,
    CAMPAIGNS,
    COUPON_REDEMPTIONS,
    COUPONS,
    PROMOTIONS,
)

PROMO_STORE_SHARE = 0.245
"""Share of the stores (the busiest) with a promotion calendar (bundled: 112 of 457)."""
PROMO_ITEM_SHARE = 0.0395
"""Items promoted per store and week, as a share of the catalogue (bundled: 3,642 of 92k)."""
REACH_BETA = (0.35, 1.8)
"""Beta law of the share of those stores an item-week's promotion reaches (mean 16%)."""
# Codes and their bundled shares (rows of promotions.parquet, in millions).
DISPLAY_CODES = ("0", "9", "5", "7", "3", "2", "6", "1", "A", "4")
DISPLAY_SHARES = (0.0, 1.52, 1.45, 1.38, 1.18, 1.05, 1.04, 0.63, 0.41, 0.34)
"""Displayed rows' codes; "0" (not on display) is set afterwards, only on mailer rows."""
MAILER_CODES = ("0", "A", "D", "H", "F", "J", "L", "C", "X", "Z", "P")
MAILER_SHARES = (6.63, 9.57, 2.56, 0.88, 0.61, 0.21, 0.19, 0.16, 0.11, 0.011, 0.0006)
NOT_DISPLAYED_IN_MAILER = 0.835
"""Share of mailer rows not on display (bundled: 57% of all rows, none outside the mailer)."""

N_CAMPAIGNS = 27
# type -> (share of campaigns, median share of users reached, days long (low, high),
#          coupons (low, high), median items per coupon)
CAMPAIGN_KINDS: dict[str, tuple[float, float, tuple[int, int], tuple[int, int], float]] = {
    "Type A": (4 / 27, 0.43, (47, 56), (180, 215), 60.0),
    "Type B": (16 / 27, 0.06, (32, 40), (8, 22), 12.0),
    "Type C": (7 / 27, 0.04, (55, 160), (1, 35), 12.0),
}
REDEMPTIONS_PER_RECIPIENT = 0.32
"""Mean coupons a recipient redeems per campaign (bundled: 2,102 for 6,589 recipients)."""
BUNDLED_PRODUCTS = 92_000
"""Catalogue size the coupon widths (items per coupon) are given for."""
COUPON_ID_START = 10_000_000_000
"""First coupon id (the bundled UPCs have 11 digits)."""


@dataclass(frozen=True)
class CalendarInputs:
    """What the plans are drawn from: the catalogue, the stores and the data's time span."""

    item_ids: np.ndarray
    item_cdf: np.ndarray
    """Cumulative purchase probability over ``item_ids`` (popular items promoted more)."""
    store_ids: np.ndarray
    """Every store id, busiest first."""
    users: int
    weeks: int
    seed: int

    @property
    def days(self) -> int:
        """Last day of the data."""
        return self.weeks * 7


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """The generator ``synthetic`` uses for (seed, stream, index); plans use streams 3-6."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _draw_codes(rng: np.random.Generator, shares: tuple[float, ...], n: int) -> np.ndarray:
    """Indices into a tuple of codes, drawn with the given shares."""
    return rng.choice(len(shares), size=n, p=np.asarray(shares) / np.sum(shares))


def _runs(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, position) of each element when owner ``i`` has ``lengths[i]`` elements."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, position


def promotion_week(inputs: CalendarInputs, week: int) -> pl.DataFrame:
    """One week of the calendar (schema ``PROMOTION_CODES``), by item."""
    rng = _rng(inputs.seed, 3, week)
    n_items = len(inputs.item_ids)
    n_stores = max(1, round(len(inputs.store_ids) * PROMO_STORE_SHARE))
    mean_reach = max(1.0, n_stores * REACH_BETA[0] / sum(REACH_BETA))
    volume = PROMO_ITEM_SHARE * n_items * n_stores * rng.lognormal(0.0, 0.12)
    drawn = max(1, round(volume / mean_reach))
    popular = np.searchsorted(inputs.item_cdf, rng.random(drawn), side="right")
    anything = rng.integers(0, n_items, drawn)
    picked = np.unique(
        np.minimum(np.where(rng.random(drawn) < 0.5, popular, anything), n_items - 1)
    )
    reach = np.clip(np.round(rng.beta(*REACH_BETA, len(picked)) * n_stores), 1, n_stores)
    owner, position = _runs(reach.astype(np.int64))
    store = (rng.integers(0, n_stores, len(picked))[owner] + position) % n_stores
    mailer = _draw_codes(rng, MAILER_SHARES, len(picked))[owner]
    display = _draw_codes(rng, DISPLAY_SHARES, len(owner))
    # Bundled: a promoted row is on display, in the mailer, or both, never neither.
    in_mailer = mailer != MAILER_CODES.index("0")
    display[in_mailer & (rng.random(len(owner)) < NOT_DISPLAYED_IN_MAILER)] = 0
    return pl.DataFrame(
        {
            C.ITEM: inputs.item_ids[picked][owner].astype(np.int64),
            C.STORE: inputs.store_ids[store].astype(np.int64),
            C.WEEK: np.full(len(owner), week, dtype=np.int32),
            C.DISPLAY: pl.Series(DISPLAY_CODES, dtype=pl.String).gather(display),
            C.MAILER: pl.Series(MAILER_CODES, dtype=pl.String).gather(mailer),
        },
        schema=C.PROMOTION_CODES,
    )


def iter_promotions(inputs: CalendarInputs) -> Iterator[pl.DataFrame]:
    """The calendar one week at a time, weeks 1..``inputs.weeks`` (the data's weeks)."""
    for week in range(1, inputs.weeks + 1):
        yield promotion_week(inputs, week)


def campaign_periods(inputs: CalendarInputs) -> pl.DataFrame:
    """``N_CAMPAIGNS`` campaigns in start order (schema ``CAMPAIGN_PERIODS``), ids from 1.

    A few start before day 1, as in the bundled data; every one ends by the data's last day.
    """
    rng = _rng(inputs.seed, 4)
    kinds = list(CAMPAIGN_KINDS)
    kind = rng.choice(len(kinds), N_CAMPAIGNS, p=[CAMPAIGN_KINDS[k][0] for k in kinds])
    start = np.sort(rng.integers(-30, inputs.days - 30, N_CAMPAIGNS))
    low = np.array([CAMPAIGN_KINDS[kinds[k]][2][0] for k in kind])
    high = np.array([CAMPAIGN_KINDS[kinds[k]][2][1] for k in kind])
    end = np.minimum(start + rng.integers(low, high + 1), inputs.days)
    return pl.DataFrame(
        {
            C.CAMPAIGN: np.arange(1, N_CAMPAIGNS + 1, dtype=np.int64),
            C.CAMPAIGN_TYPE: [kinds[k] for k in kind],
            C.START_DAY: start.astype(np.int32),
            C.END_DAY: end.astype(np.int32),
        },
        schema=C.CAMPAIGN_PERIODS,
    )


def campaign_recipients(inputs: CalendarInputs, periods: pl.DataFrame) -> pl.DataFrame:
    """Households each campaign was sent to (schema ``CAMPAIGNS``), users ``1..users``."""
    rng = _rng(inputs.seed, 5)
    frames = []
    for campaign, kind in periods.select(C.CAMPAIGN, C.CAMPAIGN_TYPE).iter_rows():
        reach = min(0.9, CAMPAIGN_KINDS[kind][1] * rng.lognormal(0.0, 0.5))
        users = np.flatnonzero(rng.random(inputs.users) < reach).astype(np.int64) + 1
        frames.append(
            pl.DataFrame(
                {C.CAMPAIGN: np.full(len(users), campaign, dtype=np.int64), C.USER: users},
                schema=C.CAMPAIGNS,
            )
        )
    return pl.concat(frames)


def coupons(inputs: CalendarInputs, periods: pl.DataFrame) -> pl.DataFrame:
    """Items each campaign's coupons cover (schema ``COUPONS``), coupon ids unique.

    A coupon covers a run of neighbouring item ids (a brand or a product line).
    """
    rng = _rng(inputs.seed, 6)
    kinds = periods.get_column(C.CAMPAIGN_TYPE).to_list()
    low = np.array([CAMPAIGN_KINDS[k][3][0] for k in kinds])
    high = np.array([CAMPAIGN_KINDS[k][3][1] for k in kinds])
    per_campaign = rng.integers(low, high + 1)
    campaign_of, _ = _runs(per_campaign)
    coupon_ids = COUPON_ID_START + np.cumsum(rng.integers(1, 40_000_000, len(campaign_of)))
    n_items = len(inputs.item_ids)
    # Coupons cover as large a share of the catalogue as in the bundled data (92k products).
    catalogue_scale = n_items / BUNDLED_PRODUCTS
    median_items = np.array([CAMPAIGN_KINDS[k][4] for k in kinds])[campaign_of] * catalogue_scale
    width = np.clip(np.round(rng.lognormal(np.log(median_items), 1.2)), 1, n_items)
    owner, position = _runs(width.astype(np.int64))
    first = rng.integers(0, n_items, len(campaign_of))
    item = inputs.item_ids[(first[owner] + position) % n_items]
    campaign_ids = periods.get_column(C.CAMPAIGN).to_numpy()
    return pl.DataFrame(
        {
            C.CAMPAIGN: campaign_ids[campaign_of][owner],
            C.COUPON: coupon_ids[owner],
            C.ITEM: item,
        },
        schema=C.COUPONS,
    ).unique(maintain_order=True)


def redemptions(
    inputs: CalendarInputs, periods: pl.DataFrame, recipients: pl.DataFrame, offers: pl.DataFrame
) -> pl.DataFrame:
    """Coupons redeemed by recipients inside their campaign's days (``COUPON_REDEMPTIONS``).

    The coupon is one of the campaign's; the item is left null, as in the bundled data.
    """
    rng = _rng(inputs.seed, 6, 1)
    times = rng.poisson(REDEMPTIONS_PER_RECIPIENT, recipients.height)
    chosen = np.repeat(np.arange(recipients.height), times)
    user = recipients.get_column(C.USER).to_numpy()[chosen]
    campaign = recipients.get_column(C.CAMPAIGN).to_numpy()[chosen]
    # Campaign ids are 1..N_CAMPAIGNS: arrays indexed by id give each row its coupons and days.
    distinct = offers.select(C.CAMPAIGN, C.COUPON).unique().sort(C.CAMPAIGN, C.COUPON)
    n_coupons = np.bincount(distinct.get_column(C.CAMPAIGN).to_numpy(), minlength=N_CAMPAIGNS + 1)
    first_coupon = np.cumsum(n_coupons) - n_coupons
    pick = first_coupon[campaign] + (rng.random(len(chosen)) * n_coupons[campaign]).astype(int)
    start = np.zeros(N_CAMPAIGNS + 1, dtype=np.int64)
    end = np.zeros(N_CAMPAIGNS + 1, dtype=np.int64)
    ids = periods.get_column(C.CAMPAIGN).to_numpy()
    start[ids] = np.maximum(periods.get_column(C.START_DAY).to_numpy(), 1)
    end[ids] = periods.get_column(C.END_DAY).to_numpy()
    span = end[campaign] - start[campaign] + 1
    day = start[campaign] + (rng.random(len(chosen)) * span).astype(np.int64)
    return pl.DataFrame(
        {
            C.USER: user,
            C.CAMPAIGN: campaign,
            C.COUPON: distinct.get_column(C.COUPON).to_numpy()[pick],
            C.ITEM: pl.Series([None] * len(chosen), dtype=pl.Int64),
            C.DAY: day.astype(np.int32),
        },
        schema=C.COUPON_REDEMPTIONS,
    ).sort(C.DAY, C.USER, C.COUPON)


def campaign_tables(inputs: CalendarInputs) -> dict[str, pl.DataFrame]:
    """The four small plan tables, by table name."""
    periods = campaign_periods(inputs)
    recipients = campaign_recipients(inputs, periods)
    offers = coupons(inputs, periods)
    return {
        CAMPAIGNS: recipients,
        CAMPAIGN_PERIODS: periods,
        COUPONS: offers,
        COUPON_REDEMPTIONS: redemptions(inputs, periods, recipients, offers),
    }


def generate(inputs: CalendarInputs) -> dict[str, pl.DataFrame]:
    """Every plan table in memory, by table name (promotions as ``PROMOTION_CODES``)."""
    promotions = pl.concat(list(iter_promotions(inputs)), rechunk=True)
    return {PROMOTIONS: promotions, **campaign_tables(inputs)}


def write_plans(out_dir: Path, inputs: CalendarInputs) -> dict[str, int]:
    """Write every plan table under ``out_dir`` (names ``SYNTH_PLAN_FILES``); rows by table.

    Promotions go to one part per week (``promotions/part-WWWWW.parquet``); parts of an
    earlier run there are replaced.
    """
    promo_dir = out_dir / SYNTH_PLAN_FILES[PROMOTIONS]
    promo_dir.mkdir(parents=True, exist_ok=True)
    for part in promo_dir.glob("part-*.parquet"):
        part.unlink()
    rows = {PROMOTIONS: 0}
    for week, frame in enumerate(iter_promotions(inputs), start=1):
        frame.write_parquet(promo_dir / f"part-{week:05d}.parquet")
        rows[PROMOTIONS] += frame.height
    for table, frame in campaign_tables(inputs).items():
        frame.write_parquet(out_dir / SYNTH_PLAN_FILES[table])
        rows[table] = frame.height
    return rows
