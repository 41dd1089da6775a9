"""Synthetic data: deterministic, canonical, and shaped like the bundled data."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import PrefilterConfig
from recsys_batch.data import columns as C
from recsys_batch.data import synthetic, synthetic_plans
from recsys_batch.data.tables import SCHEMAS
from recsys_batch.errors import DataError
from recsys_batch.model.prefilter import prefilter


@pytest.fixture(scope="module")
def data() -> synthetic.Synthetic:
    return synthetic.generate(600, seed=11)


class TestDeterminism:
    def test_same_seed_same_data(self) -> None:
        first, second = synthetic.generate(150, seed=4), synthetic.generate(150, seed=4)
        assert_frame_equal(first.transactions, second.transactions)
        assert_frame_equal(first.items, second.items)
        assert_frame_equal(first.users, second.users)

    def test_other_seed_other_data(self) -> None:
        first, second = synthetic.generate(150, seed=4), synthetic.generate(150, seed=5)
        assert not first.transactions.equals(second.transactions)

    def test_written_parts_equal_generation(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Small chunks so several parts are written; basket ids stay unique across parts.
        monkeypatch.setattr(synthetic, "CHUNK_USERS", 40)
        manifest = synthetic.write_synthetic(tmp_path, users=100, seed=2)
        assert manifest["parts"] == 3
        parts = sorted((tmp_path / "transactions").glob("part-*.parquet"))
        assert len(parts) == 3
        written = pl.read_parquet(parts)
        assert_frame_equal(written, synthetic.generate(100, seed=2).transactions)
        assert manifest["rows"] == written.height
        baskets = written.select(C.BASKET, C.USER).unique()
        assert baskets.get_column(C.BASKET).is_unique().all()

    def test_refuses_to_overwrite(self, tmp_path: Path) -> None:
        synthetic.write_synthetic(tmp_path, users=20, seed=1)
        with pytest.raises(DataError, match="already holds"):
            synthetic.write_synthetic(tmp_path, users=20, seed=1)
        synthetic.write_synthetic(tmp_path, users=30, seed=1, overwrite=True)
        assert pl.read_parquet(tmp_path / "transactions").get_column(C.USER).max() == 30


class TestShape:
    def test_canonical_schemas(self, data: synthetic.Synthetic) -> None:
        assert data.transactions.schema == C.TRANSACTIONS
        assert data.items.schema == C.ITEMS
        assert data.users.schema == C.USERS

    def test_keys_and_ranges(self, data: synthetic.Synthetic) -> None:
        tx = data.transactions
        assert tx.select(pl.col(C.TRANSACTION_KEYS).null_count().sum()).row(0) == (0,) * 5
        assert tx.get_column(C.WEEK).min() == 1
        assert tx.get_column(C.WEEK).max() == synthetic.N_WEEKS
        assert tx.get_column(C.USER).n_unique() == 600
        assert_frame_equal(
            tx.select(((pl.col(C.DAY) - 1) // 7 + 1).cast(pl.Int32).alias(C.WEEK)),
            tx.select(C.WEEK),
        )
        assert tx.get_column(C.ITEM).is_in(data.items.get_column(C.ITEM).implode()).all()
        assert (tx.get_column(C.SALES) > 0).all()

    def test_users_buy_like_the_bundled_data(self, data: synthetic.Synthetic) -> None:
        tx = data.transactions
        per_user = tx.group_by(C.USER).agg(
            pl.col(C.BASKET).n_unique().alias("baskets"), pl.col(C.ITEM).n_unique().alias("items")
        )
        assert 40 < per_user.get_column("baskets").mean() < 90  # bundled: 63
        assert 8 < tx.height / tx.get_column(C.BASKET).n_unique() < 11  # bundled: 9.4 lines
        # Repeat purchases: far fewer distinct items than lines per user.
        assert per_user.get_column("items").sum() < 0.65 * tx.height  # bundled: 0.59
        # Quantity 0 (weighed goods) appears, as in the bundled data (0.6%).
        assert 0.002 < (tx.get_column(C.QTY) == 0).mean() < 0.02

    def test_popularity_is_a_power_law(self, data: synthetic.Synthetic) -> None:
        buyers = (
            data.transactions.group_by(C.ITEM)
            .agg(pl.col(C.USER).n_unique().alias("n"))
            .get_column("n")
            .sort(descending=True)
        )
        assert buyers[0] > 0.4 * 600  # staples bought by many users (bundled: 72%)
        assert buyers.median() < 0.01 * 600  # most items bought by very few
        lines = data.transactions.group_by(C.ITEM).len().get_column("len").sort(descending=True)
        assert lines[: lines.len() // 10].sum() > 0.5 * lines.sum()  # bundled: top 10% 72%
        assert buyers.len() > 5_000

    def test_departments_of_very_different_sizes(self, data: synthetic.Synthetic) -> None:
        sizes = data.items.group_by(C.DEPARTMENT).len().get_column("len")
        assert sizes.max() > 100 * sizes.min()
        assert (sizes < PrefilterConfig().min_department_items).sum() >= 3

    def test_demographics_for_about_a_third(self, data: synthetic.Synthetic) -> None:
        share = data.users.height / 600
        assert 0.25 < share < 0.40
        assert data.users.get_column(C.USER).is_unique().all()

    def test_discounts_and_stores(self, data: synthetic.Synthetic) -> None:
        tx = data.transactions
        assert 0.4 < (tx.get_column(C.RETAIL_DISC) > 0).mean() < 0.6
        assert (tx.get_column(C.RETAIL_DISC) >= 0).all()
        assert tx.get_column(C.STORE).n_unique() > 20

    @pytest.mark.parametrize(("users", "seed"), [(300, 1), (2_500, 42)])
    def test_default_prefilter_leaves_a_real_catalogue(self, users: int, seed: int) -> None:
        data = synthetic.generate(users, seed)
        tx = data.transactions.lazy().filter(pl.col(C.WEEK) < synthetic.N_WEEKS - 3)
        funnel = prefilter(tx, data.items.lazy(), PrefilterConfig()).funnel.collect()
        items = dict(funnel.select("rule", "items").iter_rows())
        assert items["top_n"] >= 1_000
        # Every rule removes something on the way (the seed design's rules all bite).
        assert items["popularity"] < items["recent"]
        assert items["department"] < items["popularity"]
        assert items["price"] < items["department"]


def test_rejects_zero_users() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        synthetic.generate(0)


@pytest.fixture(scope="module")
def planned() -> dict[str, pl.DataFrame]:
    return synthetic_plans.generate(synthetic.plan_inputs(600, seed=11))


class TestPlans:
    def test_schemas(self, planned: dict[str, pl.DataFrame]) -> None:
        assert {table: frame.schema for table, frame in planned.items()} == {
            table: SCHEMAS[table] for table in planned
        }
        assert sorted(planned) == sorted(synthetic_plans.SYNTH_PLAN_FILES)

    def test_same_seed_same_plans(self) -> None:
        first = synthetic_plans.generate(synthetic.plan_inputs(150, 4))
        second = synthetic_plans.generate(synthetic.plan_inputs(150, 4))
        other = synthetic_plans.generate(synthetic.plan_inputs(150, 5))
        for table, frame in first.items():
            assert_frame_equal(frame, second[table])
        assert not first["promotions"].equals(other["promotions"])
        assert not first["campaigns"].equals(other["campaigns"])

    def test_calendar_covers_the_data_weeks_in_the_busiest_stores(
        self, planned: dict[str, pl.DataFrame], data: synthetic.Synthetic
    ) -> None:
        """Weeks 1..53 and no week after the data; a quarter of the stores, the busiest."""
        promotions = planned["promotions"]
        weeks = promotions.get_column(C.WEEK).unique().sort().to_list()
        assert weeks == list(range(1, synthetic.N_WEEKS + 1))
        n_stores = synthetic.n_stores_for(600)
        promo_stores = round(n_stores * synthetic_plans.PROMO_STORE_SHARE)
        stores = promotions.get_column(C.STORE).unique().sort().to_list()
        assert stores == list(range(300, 300 + promo_stores))  # store 300 is the busiest
        catalogue = data.items.get_column(C.ITEM).implode()
        assert promotions.get_column(C.ITEM).is_in(catalogue).all()
        assert promotions.select(C.ITEM, C.STORE, C.WEEK).is_unique().all()
        # Each store promotes about 4% of the catalogue a week (bundled: 3,642 of 92k).
        per_store_week = promotions.group_by(C.STORE, C.WEEK).len().get_column("len")
        assert 0.02 < per_store_week.mean() / data.items.height < 0.06

    def test_codes_are_shared_like_the_bundled_ones(self, planned: dict[str, pl.DataFrame]) -> None:
        promotions = planned["promotions"]
        on_display = promotions.get_column(C.DISPLAY) != "0"
        on_mailer = promotions.get_column(C.MAILER) != "0"
        assert 0.38 < on_display.mean() < 0.48  # bundled: 0.43
        assert 0.63 < on_mailer.mean() < 0.73  # bundled: 0.68
        assert (on_display | on_mailer).all()  # bundled: never neither
        assert set(promotions.get_column(C.DISPLAY).unique()) == set(synthetic_plans.DISPLAY_CODES)

    def test_campaigns_end_with_the_data(self, planned: dict[str, pl.DataFrame]) -> None:
        periods = planned["campaign_periods"]
        assert periods.height == synthetic_plans.N_CAMPAIGNS
        assert periods.get_column(C.CAMPAIGN).to_list() == list(range(1, 28))
        assert (periods.get_column(C.END_DAY) <= synthetic.N_DAYS).all()
        assert (periods.get_column(C.END_DAY) >= periods.get_column(C.START_DAY)).all()
        assert (periods.get_column(C.END_DAY) >= 1).all()
        reach = planned["campaigns"].group_by(C.CAMPAIGN).len().join(periods, on=C.CAMPAIGN)
        by_type = dict(reach.group_by(C.CAMPAIGN_TYPE).agg(pl.col("len").mean()).iter_rows())
        assert by_type["Type A"] > 3 * by_type["Type B"]  # bundled: ~1,100 vs ~150

    def test_redemptions_are_consistent_with_the_campaigns(
        self, planned: dict[str, pl.DataFrame]
    ) -> None:
        """As in the bundled data: the household got the campaign, the coupon is the
        campaign's, the day is inside its period and the data."""
        redeemed = planned["coupon_redemptions"]
        assert redeemed.height > 0
        recipients = planned["campaigns"]
        assert redeemed.join(recipients, on=[C.USER, C.CAMPAIGN], how="anti").is_empty()
        offers = planned["coupons"].select(C.CAMPAIGN, C.COUPON).unique()
        assert redeemed.join(offers, on=[C.CAMPAIGN, C.COUPON], how="anti").is_empty()
        inside = redeemed.join(planned["campaign_periods"], on=C.CAMPAIGN).filter(
            pl.col(C.DAY).is_between(pl.col(C.START_DAY).clip(lower_bound=1), pl.col(C.END_DAY))
        )
        assert inside.height == redeemed.height
        assert 0.2 < redeemed.height / recipients.height < 0.45  # bundled: 0.32
        # A coupon belongs to one campaign.
        per_coupon = offers.group_by(C.COUPON).agg(pl.col(C.CAMPAIGN).n_unique())
        assert (per_coupon.get_column(C.CAMPAIGN) == 1).all()

    def test_written_with_the_data_one_part_per_week(self, tmp_path: Path) -> None:
        manifest = synthetic.write_synthetic(tmp_path, users=50, seed=2)
        parts = sorted((tmp_path / "promotions").glob("part-*.parquet"))
        assert len(parts) == synthetic.N_WEEKS
        expected = synthetic_plans.generate(synthetic.plan_inputs(50, 2))
        assert_frame_equal(pl.read_parquet(parts), expected["promotions"])
        assert manifest["plans"] == {table: frame.height for table, frame in expected.items()}
        # An overwrite replaces the calendar instead of adding to it.
        synthetic.write_synthetic(tmp_path, users=30, seed=2, overwrite=True)
        again = pl.read_parquet(sorted((tmp_path / "promotions").glob("part-*.parquet")))
        expected = synthetic_plans.generate(synthetic.plan_inputs(30, 2))["promotions"]
        assert_frame_equal(again, expected)

    def test_a_week_at_100x_stays_bounded(self) -> None:
        """At 250,000 users one week is one part of about a million rows (bounded memory)."""
        inputs = synthetic.plan_inputs(250_000, 42)
        week = synthetic_plans.promotion_week(inputs, 7)
        promo_stores = round(len(inputs.store_ids) * synthetic_plans.PROMO_STORE_SHARE)
        assert week.get_column(C.STORE).n_unique() == promo_stores
        share = week.height / (len(inputs.item_ids) * promo_stores)
        assert 0.02 < share < 0.06
        assert week.height < 2_000_000
