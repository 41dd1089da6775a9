"""Point-in-time stage-2 features (issue #4): values by hand and the leakage guarantee."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import FeaturesConfig
from recsys_batch.data import columns as C
from recsys_batch.data import synthetic
from recsys_batch.model.features import (
    build_features,
    categorical_codes,
    dot_product,
    item_features,
    user_features,
)
from recsys_batch.model.ids import Factors, IdMap
from recsys_batch.model.item_features import ITEM_FEATURES, item_table_by_parts
from recsys_batch.model.point_in_time import (
    COUPONED,
    DISCOUNTED,
    PLACEHOLDER,
    PRICE,
    before_cut,
    prepared,
)
from recsys_batch.model.user_item_features import (
    user_group_features,
    user_item_features,
    window_hit_rate,
)

CUT = 5  # features as of week 5: only weeks 1..4 may be read
CFG = FeaturesConfig(recent_weeks=2)


def tx_rows(rows: list[tuple[int, int, int, int, int]]) -> pl.LazyFrame:
    """(user, basket, day, item, week) rows with quantity 1 and sales 2.0."""
    return pl.LazyFrame(
        {
            C.USER: [r[0] for r in rows],
            C.BASKET: [r[1] for r in rows],
            C.DAY: [r[2] for r in rows],
            C.ITEM: [r[3] for r in rows],
            C.QTY: [1] * len(rows),
            C.SALES: [2.0] * len(rows),
            C.STORE: [1] * len(rows),
            C.RETAIL_DISC: [0.5 if r[3] == 102 else 0.0 for r in rows],
            C.TRANS_TIME: [1200] * len(rows),
            C.WEEK: [r[4] for r in rows],
            C.COUPON_DISC: [0.0] * len(rows),
            C.COUPON_MATCH_DISC: [0.0] * len(rows),
        },
        schema=C.TRANSACTIONS,
    )


# user 10 buys 101 on days 1, 8, 15 (every 7 days) and 102 once on day 15;
# user 20 buys 101 on day 3 and shops once more on day 20 (placeholder item).
BEFORE = [
    (10, 1, 1, 101, 1),
    (10, 2, 8, 101, 2),
    (10, 3, 15, 101, 3),
    (10, 3, 15, 102, 3),
    (20, 4, 3, 101, 1),
    (20, 5, 20, 999999, 3),
]
# Test-window rows (week >= CUT): must never change a feature.
AFTER = [(10, 9, 40, 101, 6), (20, 10, 41, 102, 6), (30, 11, 42, 101, 7)]
ITEMS = pl.LazyFrame(
    {
        C.ITEM: [101, 102, 103],
        C.MANUFACTURER: [1, 2, 3],
        C.DEPARTMENT: ["DAIRY", "DAIRY", None],
        C.BRAND: ["National", "Private", None],
        C.CATEGORY: ["MILK", "CHEESE", None],
        C.SUB_CATEGORY: ["A", "B", None],
        C.PACKAGE_SIZE: [None, None, None],
    },
    schema=C.ITEMS,
)
USERS = pl.LazyFrame({C.USER: [10], **{name: ["x"] for name in C.DEMOGRAPHICS}}, schema=C.USERS)


def candidates(pairs: list[tuple[int, int]]) -> pl.LazyFrame:
    frame = pl.DataFrame(
        {C.USER: [p[0] for p in pairs], C.ITEM: [p[1] for p in pairs]},
        schema={C.USER: pl.Int64, C.ITEM: pl.Int64},
    )
    return frame.with_columns(
        *[
            pl.lit(None, dtype=dtype).alias(name)
            for name, dtype in C.CANDIDATES.items()
            if name not in (C.USER, C.ITEM)
        ]
    ).lazy()


class TestUserItem:
    def test_interval_and_overdue(self) -> None:
        out = user_item_features(tx_rows(BEFORE), CUT, CFG).collect()
        row = out.filter((pl.col(C.USER) == 10) & (pl.col(C.ITEM) == 101)).row(0, named=True)
        # reference day = newest day before the cut (20) + 1 = 21
        assert row["ui_days"] == 3
        assert row["ui_interval"] == pytest.approx(7.0)
        assert row["ui_days_since"] == 21 - 15
        assert row["ui_overdue"] == pytest.approx(6 / 7)
        assert row["ui_basket_share"] == pytest.approx(1.0)  # all 3 of the user's baskets

    def test_single_purchase_has_no_interval(self) -> None:
        out = user_item_features(tx_rows(BEFORE), CUT, CFG).collect()
        row = out.filter((pl.col(C.USER) == 10) & (pl.col(C.ITEM) == 102)).row(0, named=True)
        assert row["ui_interval"] is None
        assert row["ui_basket_share"] == pytest.approx(1 / 3)

    def test_window_hit_rate(self) -> None:
        # 2-week windows starting at weeks 1..3 (cut 5): 101 (weeks 1-3) is in all three,
        # 102 (week 3) in those starting at 2 and 3.
        out = window_hit_rate(tx_rows(BEFORE), CUT, 2, CFG).collect()
        u10 = out.filter(pl.col(C.USER) == 10).sort(C.ITEM)
        assert u10["ui_hit_rate_2w"].to_list() == pytest.approx([1.0, 2 / 3])

    @pytest.mark.parametrize("horizon", [1, 2, 4, 7])
    def test_window_hit_rate_counts_every_window_start_once(self, horizon: int) -> None:
        # Random weeks (repeats, gaps, purchases after the cut): the rate must be the share
        # of window starts s in [first week, cut - horizon] with a purchase in s..s+horizon-1.
        rng = np.random.default_rng(horizon)
        cut = 20
        rows = [
            (int(u), int(b), int(w) * 7, int(i), int(w))
            for b, (u, i, w) in enumerate(
                zip(
                    rng.integers(1, 6, 300),
                    rng.choice([101, 102, 103, 999999], 300),
                    rng.integers(1, cut + 3, 300),
                    strict=True,
                )
            )
        ]
        out = window_hit_rate(tx_rows(rows), cut, horizon, CFG).collect()
        got = {(u, i): r for u, i, r in out.rows()}
        expected = {}
        for user in {r[0] for r in rows}:
            seen = [r for r in rows if r[0] == user and r[4] < cut]
            first = min(r[4] for r in seen)
            starts = range(first, cut - horizon + 1)
            for item in {r[3] for r in seen} - {999999}:
                weeks = {r[4] for r in seen if r[3] == item}
                hits = sum(any(s <= w < s + horizon for w in weeks) for s in starts)
                if hits:
                    expected[(user, item)] = hits / max(len(starts), 1)
        assert got.keys() == expected.keys()
        for key, rate in expected.items():
            assert got[key] == pytest.approx(rate, rel=1e-12)

    def test_placeholder_is_never_an_item(self) -> None:
        out = user_item_features(tx_rows(BEFORE), CUT, CFG).collect()
        assert 999999 not in out[C.ITEM].to_list()


class TestUserAndItem:
    def test_user_features(self) -> None:
        out = user_features(tx_rows(BEFORE), CUT, CFG).collect().sort(C.USER)
        u10 = out.row(0, named=True)
        assert u10["u_baskets"] == 3
        assert u10["u_visit_interval"] == pytest.approx(7.0)
        assert u10["u_days_since_visit"] == 21 - 15
        u20 = out.row(1, named=True)
        assert u20["u_placeholder_share"] == pytest.approx(0.5)

    def test_item_features(self) -> None:
        out = item_features(tx_rows(BEFORE), CUT, CFG).collect().sort(C.ITEM)
        i101 = out.row(0, named=True)
        assert i101["i_buyers"] == 2
        assert i101["i_repeat_buyer_share"] == pytest.approx(1 / 2)  # user 10 bought it 3x
        assert i101["i_baskets"] == 4  # baskets 1, 2, 3 (user 10) and 4 (user 20)
        assert i101["i_baskets_per_buyer"] == pytest.approx(2.0)
        # recent = weeks 3-4 (user 10), previous = weeks 1-2 (users 10 and 20)
        assert (i101["i_recent_buyers"], i101["i_previous_buyers"]) == (1, 2)
        assert i101["i_trend"] == pytest.approx((1 + 1) / (2 + 1))
        # the reference day is the day after the newest line of any item, the placeholder's
        # day 20 included: last sold on day 15 -> 21 - 15
        assert i101["i_days_since_sold"] == 6
        assert out.row(1, named=True)["i_discount_share"] == pytest.approx(1.0)

    def test_department_share(self) -> None:
        out = user_group_features(tx_rows(BEFORE), ITEMS, CUT, C.DEPARTMENT, "ud", CFG).collect()
        row = out.filter(pl.col(C.USER) == 10).row(0, named=True)
        assert row["ud_share"] == pytest.approx(1.0)
        assert row["ud_baskets"] == 3

    def test_categorical_codes_missing_is_zero(self) -> None:
        codes = categorical_codes(ITEMS, C.ITEM, (C.DEPARTMENT, C.BRAND)).collect().sort(C.ITEM)
        assert codes["department_code"].to_list() == [1, 1, 0]
        assert codes["brand_code"].to_list() == [1, 2, 0]


class TestLeakage:
    """Changing anything on or after the cut changes no feature (issue #4 acceptance)."""

    def featured(self, rows: list[tuple[int, int, int, int, int]]) -> pl.DataFrame:
        feats = build_features(
            candidates([(10, 101), (10, 102), (10, 103), (20, 101), (30, 102)]),
            tx_rows(rows),
            ITEMS,
            USERS,
            CUT,
            CFG,
        )
        return feats.frame.collect().sort(C.USER, C.ITEM)

    def test_rows_after_the_cut_change_nothing(self) -> None:
        assert_frame_equal(self.featured(BEFORE), self.featured(BEFORE + AFTER))

    def test_rows_before_the_cut_do_change_features(self) -> None:
        # The guard above must be able to fail: an extra purchase before the cut shows up.
        changed = self.featured([*BEFORE, (10, 12, 22, 102, 4)])
        assert not changed.equals(self.featured(BEFORE))

    def test_feature_names_are_columns(self) -> None:
        feats = build_features(candidates([(10, 101)]), tx_rows(BEFORE), ITEMS, USERS, CUT, CFG)
        names = feats.frame.collect_schema().names()
        assert set(feats.feature_names) <= set(names)
        assert "department_code" in feats.categorical
        assert C.TARGET not in feats.feature_names

    def test_missing_items_and_users_tables(self) -> None:
        feats = build_features(candidates([(10, 101)]), tx_rows(BEFORE), None, None, CUT, CFG)
        assert feats.categorical == ()
        assert feats.frame.collect().height == 1


class TestTargets:
    WINDOW = [(10, 1, 30, 101, 6), (10, 2, 31, 101, 6), (10, 2, 31, 101, 6), (10, 3, 32, 101, 7)]

    def test_default_label_is_bought(self) -> None:
        from recsys_batch.model.features import targets  # noqa: PLC0415

        got = targets(tx_rows([*self.WINDOW, (20, 4, 30, 999999, 6)]), 999999).collect()
        assert got.rows() == [(10, 101, 1)]

    def test_graded_label_counts_distinct_days_capped(self) -> None:
        from recsys_batch.model.features import targets  # noqa: PLC0415

        rows = [*self.WINDOW, (20, 5, 30, 102, 6)]
        got = {(u, i): t for u, i, t in targets(tx_rows(rows), 999999, 2).collect().rows()}
        # user 10 bought 101 on days 30, 31, 32 (two lines on day 31): 3 days, capped at 2.
        assert got == {(10, 101): 2, (20, 102): 1}
        got5 = {(u, i): t for u, i, t in targets(tx_rows(rows), 999999, 5).collect().rows()}
        assert got5[(10, 101)] == 3


class TestPlaceholderIsConfigured:
    def test_custom_placeholder_id_is_not_an_item_but_counts_for_the_user(self) -> None:
        # The same data with the non-catalogue purchase carrying id 7 instead of 999999.
        rows = [(u, b, d, 7 if i == 999999 else i, w) for u, b, d, i, w in BEFORE]
        items = item_features(tx_rows(rows), CUT, CFG, placeholder_item=7).collect()
        assert 7 not in items[C.ITEM].to_list()
        ui = user_item_features(tx_rows(rows), CUT, CFG, placeholder_item=7).collect()
        assert 7 not in ui[C.ITEM].to_list()
        users = user_features(tx_rows(rows), CUT, CFG, placeholder_item=7).collect()
        share = dict(zip(users[C.USER], users["u_placeholder_share"], strict=True))
        assert share[20] == pytest.approx(0.5)
        # With the default id, 7 would be an ordinary item and no purchase a placeholder.
        default = user_features(tx_rows(rows), CUT, CFG).collect()
        assert default["u_placeholder_share"].max() == 0.0

    def test_build_features_threads_the_id(self) -> None:
        rows = [(u, b, d, 7 if i == 999999 else i, w) for u, b, d, i, w in BEFORE]
        feats = build_features(
            candidates([(20, 101)]), tx_rows(rows), None, None, CUT, CFG, placeholder_item=7
        )
        frame = feats.frame.collect()
        assert frame["u_placeholder_share"][0] == pytest.approx(0.5)


class TestSubCategoryAffinity:
    """User x sub-category family (``us_``): values by hand and the leakage guarantee."""

    def featured(self, rows: list[tuple[int, int, int, int, int]]) -> pl.DataFrame:
        feats = build_features(
            candidates([(10, 101), (10, 102), (20, 102)]), tx_rows(rows), ITEMS, USERS, CUT, CFG
        )
        assert {"us_share", "us_days", "ui_sub_category_loyalty"} <= set(feats.feature_names)
        return feats.frame.collect().sort(C.USER, C.ITEM)

    def test_values_by_hand(self) -> None:
        out = self.featured(BEFORE)
        # User 10: 101 (sub-category A) on days 1, 8, 15 and 102 (B) on day 15: 4 lines.
        r101, r102, r20 = out.rows(named=True)
        assert r101["us_share"] == pytest.approx(3 / 4)
        assert r101["us_days"] == 3
        assert r101["us_days_since"] == 6  # reference day 21 (newest day 20 + 1), last 15
        assert r101["ui_sub_category_loyalty"] == pytest.approx(1.0)
        assert r102["us_share"] == pytest.approx(1 / 4)
        # User 20 never bought sub-category B: zero counts, not missing.
        assert r20["us_days"] == 0
        assert r20["us_share"] == 0.0

    def test_rows_after_the_cut_change_nothing(self) -> None:
        # A purchase of sub-category B by user 20 after the cut must not show up.
        assert_frame_equal(self.featured(BEFORE), self.featured(BEFORE + AFTER))

    def test_rows_before_the_cut_do_change_it(self) -> None:
        before = self.featured(BEFORE)
        changed = self.featured([*BEFORE, (20, 12, 22, 102, 4)])
        assert changed.filter(pl.col(C.USER) == 20)["us_days"].item() == 1
        assert not changed.equals(before)


def naive_item_table(tx: pl.LazyFrame, cut: int) -> pl.DataFrame:
    """The item features by their definitions, one distinct count or median at a time."""
    lines = prepared(tx, cut).filter(pl.col(C.ITEM) != PLACEHOLDER)
    reference_day = before_cut(tx, cut).select(pl.col(C.DAY).max() + 1).collect().item()
    all_users = lines.select(pl.col(C.USER).n_unique()).collect().item()
    recent = pl.col(C.WEEK) >= cut - CFG.recent_weeks
    previous = pl.col(C.WEEK).is_between(
        cut - 2 * CFG.recent_weeks, cut - CFG.recent_weeks, closed="left"
    )
    repeat = (
        lines.group_by(C.ITEM, C.USER)
        .agg(pl.col(C.BASKET).n_unique().alias("n"))
        .group_by(C.ITEM)
        .agg((pl.col("n") >= 2).mean().alias("i_repeat_buyer_share"))
    )
    buyers = pl.col(C.USER).n_unique()
    return (
        lines.group_by(C.ITEM)
        .agg(
            pl.col(C.BASKET).n_unique().cast(pl.UInt32).alias("i_baskets"),
            buyers.cast(pl.UInt32).alias("i_buyers"),
            pl.col(C.USER).filter(recent).n_unique().cast(pl.UInt32).alias("i_recent_buyers"),
            pl.col(C.USER).filter(previous).n_unique().cast(pl.UInt32).alias("i_previous_buyers"),
            pl.col(C.QTY).sum().alias("i_quantity"),
            pl.col(PRICE).median().alias("i_price"),
            pl.col(DISCOUNTED).mean().alias("i_discount_share"),
            pl.col(COUPONED).mean().alias("i_coupon_share"),
            pl.col(C.STORE).n_unique().alias("i_stores"),
            pl.col(C.WEEK).n_unique().alias("i_weeks_sold"),
            (reference_day - pl.col(C.DAY).max()).alias("i_days_since_sold"),
            (pl.col(C.BASKET).n_unique() / buyers).alias("i_baskets_per_buyer"),
            (buyers / all_users).alias("i_user_share"),
            (
                (pl.col(C.USER).filter(recent).n_unique() + 1)
                / (pl.col(C.USER).filter(previous).n_unique() + 1)
            ).alias("i_trend"),
        )
        .join(repeat, on=C.ITEM)
        .select(C.ITEM, *ITEM_FEATURES)
        .sort(C.ITEM)
        .collect()
    )


def test_item_features_by_their_definitions() -> None:
    tx = synthetic.generate(300, 5).transactions.lazy()
    expected = naive_item_table(tx, 40)
    assert expected.height > 100
    got = item_features(tx, 40, CFG).collect().sort(C.ITEM)
    assert_frame_equal(got, expected, check_dtypes=False)
    # The median of each item's unit prices, from counts of distinct prices: bit-equal.
    assert got["i_price"].to_list() == expected["i_price"].to_list()


@pytest.mark.parametrize("n_parts", [1, 4, 11])  # 11: merged twice (MERGE_EVERY 8)
def test_item_table_by_parts_of_users_equals_one_query(n_parts: int) -> None:
    tx = synthetic.generate(300, 5).transactions.lazy()
    cut = 40
    one_query = item_features(tx, cut, CFG).collect().sort(C.ITEM)
    parts = [tx.filter(pl.col(C.USER).hash() % n_parts == p) for p in range(n_parts)]
    assert_frame_equal(item_table_by_parts(parts, cut, CFG), one_query)


class TestDotProduct:
    USERS = Factors(IdMap(np.array([10, 20]), C.USER, "u"), np.array([[1, 2], [3, -1]], "f4"))
    ITEMS = Factors(IdMap(np.array([101, 102]), C.ITEM, "i"), np.array([[0.5, 1], [2, 4]], "f4"))

    def test_values_and_absent_ids(self, monkeypatch: pytest.MonkeyPatch) -> None:
        keys = pl.DataFrame({C.USER: [20, 10, 30, 10], C.ITEM: [102, 101, 101, 999]})
        expected = [3 * 2 - 1 * 4, 1 * 0.5 + 2 * 1, None, None]
        assert dot_product(keys, self.USERS, self.ITEMS)["als_dot"].to_list() == expected
        # Rows are gathered in chunks: a chunk of one row gives the same values.
        monkeypatch.setattr("recsys_batch.model.features._DOT_CHUNK", 1)
        assert dot_product(keys, self.USERS, self.ITEMS)["als_dot"].to_list() == expected

    def test_without_factors_all_null(self) -> None:
        keys = pl.DataFrame({C.USER: [10], C.ITEM: [101]})
        got = dot_product(keys, None, self.ITEMS)["als_dot"]
        assert got.dtype == pl.Float32
        assert got.null_count() == 1
