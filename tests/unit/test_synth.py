"""Synthetic data: deterministic, canonical, and shaped like the bundled data."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import PrefilterConfig
from recsys_batch.data import columns as C
from recsys_batch.data import synthetic
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
