"""Forward-looking plan features (issue #26): from the calendar only, for the weeks scored."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.data import columns as C
from recsys_batch.data import synthetic, synthetic_plans
from recsys_batch.data.plans import NO_PLANS, Plans, plans_of
from recsys_batch.data.sources import Dataset
from recsys_batch.evaluation.backtest import BacktestResult, run_backtest
from recsys_batch.evaluation.rows import MODELS
from recsys_batch.model import split, two_stage
from recsys_batch.model.plan_features import (
    FORWARD_FEATURES,
    calendar_covers,
    forward_blocks,
    forward_decision,
    model_horizons,
    plan_tables,
    run_plan_tables,
)
from recsys_batch.model.prefilter import apply_catalogue, prefilter
from recsys_batch.run import shard_context, shard_task, sharding
from tests.small import SMALL_SETTINGS, small_dataset

CUT = 3
WEEKS = 2
# User 1 shops at stores 5 and 6 (one basket each), user 2 at store 5 only; the newest
# purchase before the cut is on day 11, so the scored days are 12..25.
TRANSACTIONS = pl.LazyFrame(
    {
        C.USER: [1, 1, 2, 1],
        C.BASKET: [10, 11, 12, 13],
        C.STORE: [5, 6, 5, 6],
        C.ITEM: [100, 100, 101, 101],
        C.WEEK: [1, 2, 2, 3],  # the last row is at the cut: never read
        C.DAY: [3, 10, 11, 15],
    }
)
PROMOTIONS = pl.LazyFrame(
    {
        C.ITEM: [100, 100, 101, 100, 101],
        C.STORE: [5, 5, 5, 6, 5],
        C.WEEK: [3, 4, 3, 9, 1],
        C.DISPLAY: ["0", "A", "0", "0", "0"],
        C.MAILER: ["A", "A", "0", "A", "A"],
    },
    schema_overrides={C.WEEK: pl.Int32},
)
PERIODS = {C.CAMPAIGN: [1, 2], C.CAMPAIGN_TYPE: ["A", "B"], C.START_DAY: [14, 26]}
KEYS = pl.DataFrame({C.USER: [1, 1, 2, 2], C.ITEM: [100, 101, 100, 101]})


def literal_plans(promotions: pl.LazyFrame = PROMOTIONS, *, late_campaign: int = 101) -> Plans:
    """Campaign 1 (days 14-20, user 2, item 100) runs in the scored days; campaign 2 (from
    day 26, after them; user 1, item ``late_campaign``) does not."""
    return plans_of(
        {
            "promotions": promotions,
            "campaigns": pl.LazyFrame({C.CAMPAIGN: [1, 2], C.USER: [2, 1]}),
            "campaign_periods": pl.LazyFrame(
                {**PERIODS, C.END_DAY: [20, 40]},
                schema_overrides={C.START_DAY: pl.Int32, C.END_DAY: pl.Int32},
            ),
            "coupons": pl.LazyFrame(
                {C.CAMPAIGN: [1, 2], C.COUPON: [7, 8], C.ITEM: [100, late_campaign]}
            ),
        }
    )


def features_of(plans: Plans, transactions: pl.LazyFrame = TRANSACTIONS) -> pl.DataFrame:
    items = pl.LazyFrame({C.ITEM: [100, 101]})
    tables = plan_tables(plans, items, [(CUT, WEEKS)])
    return forward_blocks(KEYS, transactions, CUT, tables)


class TestDecision:
    def test_covered_only_when_every_scored_week_has_rows(self) -> None:
        plans = literal_plans()
        assert calendar_covers(plans, 3, 5)  # weeks 3 and 4
        assert not calendar_covers(plans, 3, 6)  # week 5 is missing
        assert forward_decision(plans, [(3, 2)]) == (
            True,
            "the promotion calendar covers weeks 3-4",
        )
        on, reason = forward_decision(plans, [(3, 2), (8, 2)])
        assert not on and reason == "the promotion calendar does not cover weeks 8-9"

    def test_no_calendar_no_forward_features(self) -> None:
        assert forward_decision(NO_PLANS, [(3, 2)]) == (False, "no promotion calendar in the data")

    def test_a_run_decided_off_builds_no_tables_even_when_covered(self) -> None:
        """Mutation caught: the nightly's decision ignored by the gate's backtest."""
        tables, _ = run_plan_tables(literal_plans(), pl.LazyFrame({C.ITEM: [100]}), [(3, 2)], False)
        assert tables is None


class TestForwardBlocks:
    def test_known_values(self) -> None:
        got = features_of(literal_plans())
        expected = pl.DataFrame(
            {
                # user 1: store 5 (half the baskets: mailer both weeks, display week 4) and
                # store 6 (its mailer week 9 is outside weeks 3-4).
                "pf_mailer": [0.5, 0.0, 1.0, 0.0],
                "pf_display": [0.25, 0.0, 0.5, 0.0],
                "pf_mailer_display": [0.25, 0.0, 0.5, 0.0],
                # campaign 1 (user 2, item 100) runs on days 14-20, inside days 12-25.
                "pf_coupon": [0.0, 0.0, 1.0, 0.0],
            }
        )
        assert got.columns == list(FORWARD_FEATURES)
        assert_frame_equal(got, expected)

    def test_calendar_after_the_scored_weeks_changes_nothing(self) -> None:
        """Poison test: promotions of weeks after the scored ones, a campaign starting after
        the scored days, rewritten: the features must not move."""
        late = pl.LazyFrame(
            {
                C.ITEM: [100, 101, 101],
                C.STORE: [5, 5, 6],
                C.WEEK: [5, 5, 6],
                C.DISPLAY: ["B", "B", "B"],
                C.MAILER: ["B", "B", "B"],
            },
            schema_overrides={C.WEEK: pl.Int32},
        )
        poisoned = literal_plans(pl.concat([PROMOTIONS, late]), late_campaign=100)
        assert_frame_equal(features_of(poisoned), features_of(literal_plans()))

    def test_transactions_from_the_cut_on_change_nothing(self) -> None:
        """Mutation caught: the user's stores or the first scored day read at/after the cut."""
        late = pl.LazyFrame(
            {
                C.USER: [2, 2, 1],
                C.BASKET: [20, 21, 22],
                C.STORE: [6, 6, 6],
                C.ITEM: [100, 101, 100],
                C.WEEK: [3, 4, 5],
                C.DAY: [16, 24, 30],
            }
        )
        again = features_of(literal_plans(), pl.concat([TRANSACTIONS, late]))
        assert_frame_equal(again, features_of(literal_plans()))


def plan_dataset(users: int = 200, seed: int = 3) -> Dataset:
    """:func:`tests.small.small_dataset` with the synthetic calendar and campaigns."""
    planned = synthetic_plans.generate(synthetic.plan_inputs(users, seed))
    plans = plans_of({table: frame.lazy() for table, frame in planned.items()})
    return dataclasses.replace(small_dataset(users, seed), plans=plans)


def poisoned_after(ds: Dataset, first_test_week: int) -> Dataset:
    """Every purchase of the test window changed (other items, 10x quantities) and a
    calendar of every item on display and in the mailer at every store in the weeks after."""
    tx = ds.transactions.collect()
    test = tx.filter(pl.col(C.WEEK) >= first_test_week)
    changed = test.with_columns(test[C.ITEM].reverse(), pl.col(C.QTY) * 10)
    assert ds.plans.promotions is not None
    promotions = ds.plans.promotions.collect()
    last = int(promotions[C.WEEK].max())  # type: ignore[arg-type]
    later = (
        promotions.select(C.ITEM, C.STORE)
        .unique()
        .join(
            pl.DataFrame({C.WEEK: list(range(last + 1, last + 9))}, schema={C.WEEK: pl.Int32}),
            how="cross",
        )
        .with_columns(
            pl.lit("A").alias(C.DISPLAY),
            pl.lit("A").alias(C.MAILER),
            pl.lit(value=True).alias(C.ON_DISPLAY),
            pl.lit(value=True).alias(C.ON_MAILER),
        )
        .select(promotions.columns)
    )
    plans = dataclasses.replace(ds.plans, promotions=pl.concat([promotions, later]).lazy())
    rows = pl.concat([tx.filter(pl.col(C.WEEK) < first_test_week), changed])
    return dataclasses.replace(ds, transactions=rows.lazy(), plans=plans)


@pytest.fixture(scope="module")
def with_plans() -> BacktestResult:
    """The backtest of ``recsys evaluate``: every list, the new-items list and baselines too."""
    return run_backtest(plan_dataset(), SMALL_SETTINGS)


class TestBacktestWithPlans:
    def test_calendar_covers_the_test_window_so_the_model_reads_the_features(
        self, with_plans: BacktestResult
    ) -> None:
        assert with_plans.model is not None and with_plans.model.forward_plan_features
        assert set(FORWARD_FEATURES) <= set(with_plans.model.feature_names)

    def test_decided_off_reads_none(self) -> None:
        result = run_backtest(plan_dataset(), SMALL_SETTINGS, baselines=False, forward_plans=False)
        assert result.model is not None and not result.model.forward_plan_features
        assert not any(name.startswith("pf_") for name in result.model.feature_names)

    def test_test_window_and_later_calendar_poisoned_lists_unchanged(
        self, with_plans: BacktestResult
    ) -> None:
        """Leakage: the calendar after the scored weeks and every purchase of the test window
        rewritten; every list must stay the same: the two-stage list, the new-items list
        (``two_stage_new``) and the baselines. Mutation caught: any of them reading the
        calendar or the purchases from the test window on."""
        again = run_backtest(
            poisoned_after(plan_dataset(), with_plans.windows.target_end), SMALL_SETTINGS
        )
        assert again.windows == with_plans.windows
        assert set(again.lists) == set(MODELS)
        for name in MODELS:
            assert_frame_equal(again.lists[name], with_plans.lists[name], check_row_order=False)


def test_sharded_scoring_with_plan_features_equals_scoring_everyone() -> None:
    """Per shard, the forward features join the driver's plan tables through the shard's own
    users' stores. Mutation caught: a shard without the plan tables (its users would be
    scored without the features the model reads: an error) or with other weeks."""
    ds = plan_dataset()
    settings = SMALL_SETTINGS
    tx = ds.transactions.filter(pl.col(C.WEEK) <= 45)  # the calendar covers weeks 46-49
    catalogue = prefilter(tx, ds.items, settings.prefilter).catalogue.collect()
    tx_cat = apply_catalogue(tx, catalogue.lazy(), settings.prefilter).collect()
    first, last = split.week_range(tx_cat.lazy())
    windows = split.production_windows(first, last, settings.split)
    horizons = model_horizons(windows.history_end, windows.target_end, settings.split)
    tables, _ = run_plan_tables(ds.plans, catalogue.lazy().select(C.ITEM), horizons)
    assert tables is not None
    data = two_stage.ModelData(tx_cat.lazy(), catalogue.lazy(), ds.items, ds.users, tables)
    model = two_stage.train_two_stage(data, windows, settings)
    assert model.forward_plan_features
    users = tx_cat.select(C.USER).unique().sort(C.USER)
    expected = two_stage.recommend(model, data, users.lazy(), settings)
    shards = 3
    ctx = shard_context.build_context(model, data, settings, shards)
    assert ctx.plans is tables
    got = pl.concat(
        [
            shard_task.shard_recommendations(
                ctx, shard, users.filter(sharding.shard_of(shards) == shard)
            )[0]
            for shard in range(shards)
        ]
    )
    top = got.filter(pl.col(C.RANK) <= settings.ranker.top_k)  # shards keep publish.top_n
    assert_frame_equal(
        top.select(expected.columns), expected, check_row_order=False, check_dtypes=False
    )
