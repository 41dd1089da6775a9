"""Stage-2 features from the promotion calendar, known ahead (issue #26).

Forward-looking features describe the ``H`` weeks after the feature cut, ``[cut, cut + H)``
with ``H`` the weeks of a test window (:func:`plan_horizon_weeks`), at training (as of the
stage-2 window's start) and at scoring alike. They come from the plans only, never from a
purchase of those weeks:

- ``pf_mailer``, ``pf_display``, ``pf_mailer_display``: the share of those weeks the item is in
  the weekly mailer / on display / both at the customer's usual stores, each store weighted
  by its share of the customer's baskets before the cut;
- ``pf_coupon``: 1 when the customer got a campaign running in those days whose coupons
  cover the item.

Measured and not kept (validation origins, docs/evaluation.md): the mailer share minus its
level before the cut, the same for display, the item's mailer and display share over all
stores, a 6-week horizon at training (the stage-2 window), and, from before the cut, the
share of the customer's purchases (of the item, overall) made on the mailer and the item's
mailer lift.

They are used only when the calendar covers every scored week (:func:`calendar_covers`),
for training and for scoring alike: the decision is made once per run and recorded with the
model (``TrainedTwoStage.forward_plan_features``), so that the gate measures what is served.

Scale: the promotions (20.9M rows bundled) are read once per run on the driver, restricted
to the catalogue items and the weeks scored (:func:`plan_tables`); a shard joins them through
its users' stores only.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from recsys_batch.config import SplitConfig
from recsys_batch.data import columns as C
from recsys_batch.data.plans import Plans
from recsys_batch.model.point_in_time import before_cut

FORWARD_FEATURES = ("pf_mailer", "pf_display", "pf_mailer_display", "pf_coupon")
"""The forward-looking plan features, in the order they are added."""

DAYS_PER_WEEK = 7


def plan_horizon_weeks(cfg: SplitConfig) -> int:
    """Weeks a forward feature looks ahead: those of a backtest's test window.

    The backtest's test window is ``target_end <= week <= W``, ``split.test_weeks + 1``
    weeks; the nightly serves the same span after its cut, so the model trained and gated
    on that span serves it.
    """
    return cfg.test_weeks + 1


@dataclass(frozen=True)
class PlanTables:
    """The plan rows the features read, restricted once per run (driver), and the weeks
    each feature cut looks ahead."""

    promotions: pl.DataFrame
    """``store_id, item_id, week, on_display, on_mailer``: catalogue items, the weeks after
    every cut, at least one flag set."""
    coupons: pl.DataFrame
    """``campaign_id, item_id``: a campaign's coupons cover the item (catalogue items)."""
    campaigns: pl.DataFrame
    """``campaign_id, user_id``: the campaign was sent to the user."""
    periods: pl.DataFrame
    """``campaign_id, start_day, end_day``: when the campaign runs (inclusive)."""
    horizons: tuple[tuple[int, int], ...]
    """``(cut, weeks)``: features as of ``cut`` describe ``[cut, cut + weeks)``."""

    def horizon(self, as_of_week: int) -> int:
        """Weeks looked ahead from ``as_of_week`` (a cut the tables were built for)."""
        for cut, weeks in self.horizons:
            if cut == as_of_week:
                return weeks
        msg = f"plan tables built for cuts {[c for c, _ in self.horizons]}, not {as_of_week}"
        raise ValueError(msg)


def calendar_weeks(plans: Plans, first_week: int, end_week: int) -> set[int]:
    """The weeks of ``[first_week, end_week)`` that have at least one promotion row."""
    if plans.promotions is None or end_week <= first_week:
        return set()
    weeks = (
        plans.promotions.filter(pl.col(C.WEEK).is_between(first_week, end_week, closed="left"))
        .select(pl.col(C.WEEK).unique())
        .collect()
    )
    return {int(w) for w in weeks[C.WEEK]}


def calendar_covers(plans: Plans, first_week: int, end_week: int) -> bool:
    """Whether the promotion calendar has every week of ``[first_week, end_week)``.

    A week with no promotion row at all is taken as not covered (the calendar ends there),
    so a run whose calendar stops before the scored weeks uses no forward feature.
    """
    weeks = calendar_weeks(plans, first_week, end_week)
    return end_week > first_week and weeks == set(range(first_week, end_week))


Horizons = list[tuple[int, int]]
"""``(cut, weeks)`` pairs: features as of week ``cut`` describe weeks ``[cut, cut + weeks)``."""


def forward_decision(plans: Plans, horizons: Horizons) -> tuple[bool, str]:
    """Forward features on or off for a run whose features are taken at ``horizons``.

    On only when the calendar covers the weeks after every cut (training and scoring
    alike). Returns the decision and the reason, for the log and the manifest.
    """
    if plans.promotions is None:
        return False, "no promotion calendar in the data"
    spans = [(cut, cut + weeks - 1) for cut, weeks in horizons]
    # One scan of the calendar (20.9M rows bundled) for every span.
    known = calendar_weeks(plans, min(a for a, _ in spans), max(b for _, b in spans) + 1)
    missing = [
        f"{first}-{last}" for first, last in spans if not set(range(first, last + 1)) <= known
    ]
    if missing:
        return False, f"the promotion calendar does not cover weeks {', '.join(missing)}"
    return True, "the promotion calendar covers weeks " + ", ".join(f"{a}-{b}" for a, b in spans)


PROMOTION_FLAGS = pl.Schema(
    {
        C.STORE: pl.Int64,
        C.ITEM: pl.Int64,
        C.WEEK: pl.Int32,
        C.ON_DISPLAY: pl.Boolean,
        C.ON_MAILER: pl.Boolean,
    }
)


def plan_tables(plans: Plans, catalogue_items: pl.LazyFrame, horizons: Horizons) -> PlanTables:
    """The plan rows the forward features at ``horizons`` read, for the catalogue items.

    Promotions: the weeks after each cut. Collected once; small (catalogue items x stores x
    those weeks; campaigns and coupons as given).
    """
    items = catalogue_items.select(C.ITEM).unique()
    weeks = pl.any_horizontal(
        pl.col(C.WEEK).is_between(cut, cut + n, closed="left") for cut, n in horizons
    )
    flagged = pl.col(C.ON_DISPLAY) | pl.col(C.ON_MAILER)
    promotions = (
        plans.promotions.filter(weeks & flagged)
        .join(items, on=C.ITEM, how="semi")
        .select(PROMOTION_FLAGS.names())
        if plans.promotions is not None
        else pl.LazyFrame(schema=PROMOTION_FLAGS)
    )
    campaigned = (
        plans.campaigns is not None
        and plans.campaign_periods is not None
        and plans.coupons is not None
    )
    coupons = (
        plans.coupons.join(items, on=C.ITEM, how="semi").select(C.CAMPAIGN, C.ITEM).unique()
        if campaigned and plans.coupons is not None
        else pl.LazyFrame(schema={C.CAMPAIGN: pl.Int64, C.ITEM: pl.Int64})
    )
    campaigns = (
        plans.campaigns.select(C.CAMPAIGN, C.USER).unique()
        if campaigned and plans.campaigns is not None
        else pl.LazyFrame(schema={C.CAMPAIGN: pl.Int64, C.USER: pl.Int64})
    )
    periods = (
        plans.campaign_periods.select(C.CAMPAIGN, C.START_DAY, C.END_DAY)
        if campaigned and plans.campaign_periods is not None
        else pl.LazyFrame(schema={C.CAMPAIGN: pl.Int64, C.START_DAY: pl.Int32, C.END_DAY: pl.Int32})
    )
    promo, coupon, campaign, period = pl.collect_all([promotions, coupons, campaigns, periods])
    return PlanTables(promo, coupon, campaign, period, tuple(horizons))


def user_store_shares(transactions: pl.LazyFrame, as_of_week: int) -> pl.LazyFrame:
    """``user_id, store_id, _store_share``: each store's share of the user's baskets before
    the cut (the customer's usual stores, weighted)."""
    baskets = (
        before_cut(transactions, as_of_week)
        .filter(pl.col(C.STORE).is_not_null())
        .group_by(C.USER, C.STORE)
        .agg(pl.col(C.BASKET).n_unique().alias("_baskets"))
    )
    share = pl.col("_baskets") / pl.col("_baskets").sum().over(C.USER)
    return baskets.select(C.USER, C.STORE, share.alias("_store_share"))


def store_week_shares(
    promotions: pl.LazyFrame, first_week: int, weeks: int, prefix: str
) -> pl.LazyFrame:
    """``store_id, item_id`` and the share of ``[first_week, first_week + weeks)`` the item is
    in the mailer (``{prefix}mailer``), on display and both, at that store."""
    in_weeks = pl.col(C.WEEK).is_between(first_week, first_week + weeks, closed="left")
    both = pl.col(C.ON_MAILER) & pl.col(C.ON_DISPLAY)
    return (
        promotions.filter(in_weeks)
        .group_by(C.STORE, C.ITEM)
        .agg(
            (pl.col(C.ON_MAILER).sum() / weeks).alias(f"{prefix}mailer"),
            (pl.col(C.ON_DISPLAY).sum() / weeks).alias(f"{prefix}display"),
            (both.sum() / weeks).alias(f"{prefix}both"),
        )
    )


def store_features(
    pairs: pl.LazyFrame, transactions: pl.LazyFrame, as_of_week: int, tables: PlanTables
) -> pl.LazyFrame:
    """``pf_mailer``, ``pf_display``, ``pf_mailer_display`` of ``pairs``: each store's share
    of the weeks after the cut, weighted by its share of the user's baskets."""
    weeks = tables.horizon(as_of_week)
    per_store = store_week_shares(tables.promotions.lazy(), as_of_week, weeks, "_")
    stores = user_store_shares(transactions, as_of_week).join(
        pairs.select(C.USER).unique(), on=C.USER, how="semi"
    )
    weighted = {"pf_mailer": "_mailer", "pf_display": "_display", "pf_mailer_display": "_both"}
    return (
        pairs.join(stores, on=C.USER)
        .join(per_store, on=[C.STORE, C.ITEM])
        .group_by(C.USER, C.ITEM)
        .agg(
            (pl.col("_store_share") * pl.col(share)).sum().alias(feature)
            for feature, share in weighted.items()
        )
    )


def coupon_features(
    pairs: pl.LazyFrame, transactions: pl.LazyFrame, as_of_week: int, tables: PlanTables
) -> pl.LazyFrame:
    """``pf_coupon`` = 1 for the pairs whose user got a campaign running in the scored days
    with a coupon for the item. The scored days are the ``7 x weeks`` from the day after
    the newest purchase before the cut."""
    first_day = before_cut(transactions, as_of_week).select(
        (pl.col(C.DAY).max() + 1).cast(pl.Int32).alias("_first_day")
    )
    last_day = pl.col("_first_day") + DAYS_PER_WEEK * tables.horizon(as_of_week) - 1
    running = (pl.col(C.START_DAY) <= last_day) & (pl.col(C.END_DAY) >= pl.col("_first_day"))
    live = tables.periods.lazy().join(first_day, how="cross").filter(running).select(C.CAMPAIGN)
    targeted = (
        tables.campaigns.lazy()
        .join(live, on=C.CAMPAIGN, how="semi")
        .join(pairs.select(C.USER).unique(), on=C.USER, how="semi")
        .join(tables.coupons.lazy(), on=C.CAMPAIGN)
        .select(C.USER, C.ITEM)
        .unique()
    )
    return pairs.join(targeted, on=[C.USER, C.ITEM], how="semi").with_columns(
        pl.lit(1.0).alias("pf_coupon")
    )


def forward_blocks(
    keys: pl.DataFrame, transactions: pl.LazyFrame, as_of_week: int, tables: PlanTables
) -> pl.DataFrame:
    """The :data:`FORWARD_FEATURES` of every row of ``keys``, in their order (0: none).

    Reads the calendar of the weeks after the cut and the campaigns running then; of the
    transactions, only those before the cut (the user's stores, the newest day).
    """
    pairs = keys.select(C.USER, C.ITEM).lazy()
    on = [C.USER, C.ITEM]
    stores, coupons = pl.collect_all(
        [
            store_features(pairs, transactions, as_of_week, tables),
            coupon_features(pairs, transactions, as_of_week, tables),
        ]
    )
    block = pl.concat([_aligned(keys, stores, on), _aligned(keys, coupons, on)], how="horizontal")
    return block.select(pl.col(FORWARD_FEATURES).fill_null(0.0))


def _aligned(keys: pl.DataFrame, table: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    """``table``'s other columns for every row of ``keys``, in order (null when absent)."""
    return keys.select(on).join(table, on=on, how="left", maintain_order="left").drop(on)


def model_horizons(history_end: int, target_end: int, cfg: SplitConfig) -> Horizons:
    """The cuts of a two-stage model and the weeks after each that its features describe.

    Both the weeks of a test window (:func:`plan_horizon_weeks`): at training (as of
    ``history_end``) the first of the stage-2 window's, at scoring (as of ``target_end``) the
    weeks served. (The whole 6-week stage-2 window at training measured no better.)
    """
    weeks = plan_horizon_weeks(cfg)
    return [(history_end, weeks), (target_end, weeks)]


def run_plan_tables(
    plans: Plans,
    catalogue_items: pl.LazyFrame,
    horizons: Horizons,
    forward: bool | None = None,
) -> tuple[PlanTables | None, str]:
    """The plan tables of a model whose features are taken at ``horizons``, or None.

    ``forward``: the run's decision when made elsewhere (the nightly decides once, for its
    gate and its scoring); None decides here from the calendar (:func:`forward_decision`).
    A decision of True still needs the calendar to cover these weeks.

    Returns
    -------
    tuple
        The tables (None: no forward feature) and the reason, for logs and manifests.
    """
    if forward is False:
        return None, "off for this run (decided for the weeks it serves)"
    covered, reason = forward_decision(plans, horizons)
    if not covered:
        return None, reason
    return plan_tables(plans, catalogue_items, horizons), reason
