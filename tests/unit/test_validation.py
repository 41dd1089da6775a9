"""Load-time validation: what is fatal, what is dropped, what is only a warning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from recsys_batch.config import DataConfig, Settings, SplitConfig
from recsys_batch.data import columns as C
from recsys_batch.data import sources, validation
from recsys_batch.data.plans import Plans, plans_of
from recsys_batch.data.sources import Dataset
from recsys_batch.data.tables import SourceTable
from recsys_batch.errors import DataError, SchemaMismatchError


def transactions(weeks: int = 16, **overrides: list[Any]) -> pl.LazyFrame:
    """Two users, one line a week each (items 1 and 2), weeks 1..weeks."""
    n = 2 * weeks
    data: dict[str, list[Any]] = {
        C.USER: [1, 2] * weeks,
        C.BASKET: list(range(n)),
        C.DAY: [(i // 2) * 7 + 1 for i in range(n)],
        C.ITEM: [1, 2] * weeks,
        C.QTY: [1] * n,
        C.SALES: [2.0] * n,
        C.STORE: [1] * n,
        C.RETAIL_DISC: [0.0] * n,
        C.TRANS_TIME: [1200] * n,
        C.WEEK: [i // 2 + 1 for i in range(n)],
        C.COUPON_DISC: [0.0] * n,
        C.COUPON_MATCH_DISC: [0.0] * n,
    }
    for column, values in overrides.items():
        data[column] = values + data[column][len(values) :]
    return pl.LazyFrame(data, schema=C.TRANSACTIONS)


def items(ids: list[int]) -> pl.LazyFrame:
    return pl.LazyFrame(
        {C.ITEM: ids, C.DEPARTMENT: ["GROCERY"] * len(ids)}, schema_overrides={C.ITEM: pl.Int64}
    ).select(
        [
            pl.col(c) if c in (C.ITEM, C.DEPARTMENT) else pl.lit(None, dtype=t).alias(c)
            for c, t in C.ITEMS.items()
        ]
    )


SETTINGS = Settings()


class TestReturns:
    def test_negative_rows_are_dropped_and_counted_zero_quantity_kept(self) -> None:
        tx = transactions(**{C.QTY: [-1, 0, 1], C.SALES: [2.0, 2.0, -0.5]})
        dataset, report = validation.validate(Dataset(tx, None, None, "t"), SETTINGS)
        assert report.dropped_returns == 2
        assert report.rows == 32
        kept = dataset.transactions.collect()
        assert kept.height == 30
        assert kept.get_column(C.QTY).min() == 0  # weighed goods stay
        assert kept.get_column(C.SALES).min() >= 0

    def test_clean_data_is_returned_untouched(self) -> None:
        dataset = Dataset(transactions(), None, None, "t")
        assert validation.validated(dataset, SETTINGS) is dataset

    def test_drop_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        tx = transactions(**{C.QTY: [-3]})
        with caplog.at_level(logging.INFO, logger="recsys_batch.data.validation"):
            validation.validated(Dataset(tx, None, None, "t"), SETTINGS)
        assert "dropped 1 return row(s)" in caplog.text


def test_items_absent_from_item_table_is_a_warning_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dataset = Dataset(transactions(), items([1, 7]), None, "t")
    with caplog.at_level(logging.WARNING, logger="recsys_batch.data.validation"):
        report = validation.check(dataset, SETTINGS)
    assert report.missing_items == 1
    assert report.item_rows == 2
    assert "1 item(s) bought" in caplog.text
    assert caplog.records[0].levelno == logging.WARNING


class TestFatal:
    def test_null_key(self) -> None:
        tx = transactions(**{C.USER: [None]})
        with pytest.raises(DataError, match="1 row\\(s\\) have no 'user_id'") as info:
            validation.check(Dataset(tx, None, None, "t"), SETTINGS)
        assert info.value.column == C.USER
        assert info.value.file is not None

    def test_negative_user_id_in_transactions(self) -> None:
        tx = transactions(**{C.USER: [-1, 2, -1]})
        with pytest.raises(DataError, match="2 row\\(s\\) have a negative 'user_id'") as info:
            validation.check(Dataset(tx, None, None, "t"), SETTINGS)
        assert info.value.column == C.USER
        assert "non-negative" in str(info.value)

    def test_negative_user_id_read_from_text(self, tmp_path: Path) -> None:
        frame = transactions().collect().cast({C.USER: pl.String})
        frame = frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 5).then(pl.lit(" -7")).otherwise(C.USER).alias(C.USER)
        )
        frame.write_csv(tmp_path / "tx.csv")
        cfg = DataConfig(source="files", path=tmp_path / "tx.csv")
        with pytest.raises(DataError, match="1 row\\(s\\) have a negative") as info:
            validation.check(sources.load_dataset(cfg), SETTINGS)
        assert info.value.file == str(tmp_path / "tx.csv")

    def test_negative_user_id_in_users_table(self) -> None:
        users = pl.LazyFrame({C.USER: [1, -2]}, schema_overrides={C.USER: pl.Int64}).select(
            [
                pl.col(C.USER) if c == C.USER else pl.lit(None, dtype=t).alias(c)
                for c, t in C.USERS.items()
            ]
        )
        with pytest.raises(DataError, match="users: 1 row\\(s\\) have a negative"):
            validation.check(Dataset(transactions(), None, users, "t"), SETTINGS)

    def test_empty_transactions(self) -> None:
        tx = transactions().clear()
        with pytest.raises(DataError, match="no rows"):
            validation.check(Dataset(tx, None, None, "t"), SETTINGS)

    @pytest.mark.parametrize(("weeks", "ok"), [(13, False), (14, True)])
    def test_week_range_must_cover_the_windows(self, weeks: int, ok: bool) -> None:
        # test 3 + stage 2 6 + min history 4: W - 9 - first >= 4 -> at least 14 weeks.
        dataset = Dataset(transactions(weeks), None, None, "t")
        if ok:
            assert validation.check(dataset, SETTINGS).windows.history_end == 5
        else:
            with pytest.raises(DataError, match="history week") as info:
                validation.check(dataset, SETTINGS)
            assert info.value.column == C.WEEK
            assert info.value.file == "t transactions"

    def test_windows_follow_the_split_config(self) -> None:
        settings = Settings(split=SplitConfig(test_weeks=1, stage2_weeks=2, min_history_weeks=1))
        report = validation.check(Dataset(transactions(5), None, None, "t"), settings)
        assert (report.windows.history_end, report.windows.target_end) == (2, 4)


class TestColumns:
    def source(self, frame: pl.LazyFrame, columns: dict[str, str]) -> SourceTable:
        return SourceTable("transactions", "tx.csv", frame, columns)

    def test_missing_required_column_suggests_the_closest(self) -> None:
        frame = transactions().rename({C.ITEM: "itemid"})
        with pytest.raises(SchemaMismatchError, match="did you mean 'itemid'") as info:
            validation.check_columns(self.source(frame, {}))
        assert info.value.column == C.ITEM
        assert "rename column 'itemid'" in str(info.value)

    def test_case_difference_is_suggested(self) -> None:
        frame = transactions().rename({C.WEEK: "WEEK"})
        with pytest.raises(SchemaMismatchError, match="did you mean 'WEEK'"):
            validation.check_columns(self.source(frame, {}))

    def test_misspelled_optional_column(self) -> None:
        frame = transactions().rename({C.STORE: "store_idd"})
        with pytest.raises(SchemaMismatchError, match="misspelling of 'store_id'") as info:
            validation.check_columns(self.source(frame, {}))
        assert info.value.column == "store_idd"

    def test_unrelated_extra_columns_are_fine(self) -> None:
        frame = transactions().drop(C.STORE).with_columns(pl.lit(1).alias("loyalty_card"))
        validation.check_columns(self.source(frame, {}))

    def test_value_that_cannot_be_cast_names_the_first(self, tmp_path: Path) -> None:
        frame = transactions().collect().cast({C.QTY: pl.String})
        frame = frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("1.5kg")).otherwise(C.QTY).alias(C.QTY)
        )
        frame.write_csv(tmp_path / "tx.csv")
        cfg = DataConfig(source="files", path=tmp_path / "tx.csv")
        with pytest.raises(SchemaMismatchError, match="'1.5kg'") as info:
            validation.check(sources.load_dataset(cfg), SETTINGS)
        assert info.value.column == C.QTY
        assert info.value.file == str(tmp_path / "tx.csv")


def test_checks_are_one_collect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value check is gathered in a single ``collect_all`` (one pass per file)."""
    calls = []
    real = pl.collect_all

    def counting(frames: list[pl.LazyFrame], **kwargs: Any) -> list[pl.DataFrame]:
        calls.append(len(frames))
        return real(frames, **kwargs)

    def forbidden(*_: Any, **__: Any) -> None:
        raise AssertionError("validation must not collect frame by frame")

    monkeypatch.setattr(pl, "collect_all", counting)
    monkeypatch.setattr(pl.LazyFrame, "collect", forbidden)
    dataset = Dataset(transactions(), items([1, 2]), None, "t")
    validation.check(dataset, SETTINGS)
    assert calls == [4]  # two tables, the transaction stats, the missing-items count


@pytest.mark.slow
def test_bundled_data_report() -> None:
    report = validation.check(sources.load_dataset(DataConfig()), SETTINGS)
    assert report.rows == 1_469_307
    assert (report.first_week, report.last_week) == (1, 53)
    assert report.dropped_returns == 0
    assert report.missing_items == 17
    assert report.user_rows == 801
    assert report.windows.target_end == 50


def literal_plans(**overrides: pl.LazyFrame) -> Plans:
    """Small valid plans: weeks 2..3, campaigns 1..2 over days -3..20, two redemptions."""
    frames = {
        "promotions": pl.LazyFrame(
            {C.ITEM: [1, 2], C.STORE: [1, 1], C.WEEK: [2, 3], C.DISPLAY: ["0", "5"],
             C.MAILER: ["A", "0"]},
            schema=C.PROMOTION_CODES,
        ),
        "campaigns": pl.LazyFrame({C.CAMPAIGN: [1, 2], C.USER: [1, 2]}, schema=C.CAMPAIGNS),
        "campaign_periods": pl.LazyFrame(
            {C.CAMPAIGN: [1, 2], C.CAMPAIGN_TYPE: ["Type A", None], C.START_DAY: [-3, 8],
             C.END_DAY: [10, 20]},
            schema=C.CAMPAIGN_PERIODS,
        ),
        "coupons": pl.LazyFrame(
            {C.CAMPAIGN: [1, 2], C.COUPON: [11, 12], C.ITEM: [1, 2]}, schema=C.COUPONS
        ),
        "coupon_redemptions": pl.LazyFrame(
            {C.USER: [1, 2], C.CAMPAIGN: [1, 2], C.COUPON: [11, 12], C.ITEM: [None, None],
             C.DAY: [5, 9]},
            schema=C.COUPON_REDEMPTIONS,
        ),
    }  # fmt: skip
    return plans_of({**frames, **overrides})


class TestPlans:
    def check(self, plans: Plans) -> validation.ValidationReport:
        return validation.check(Dataset(transactions(), None, None, "t", plans=plans), SETTINGS)

    def test_report_gives_rows_and_ranges(self) -> None:
        assert self.check(literal_plans()).plans == {
            "promotions": {"rows": 2, "weeks": [2, 3]},
            "campaigns": {"rows": 2},
            "campaign_periods": {"rows": 2, "days": [-3, 20]},
            "coupons": {"rows": 2},
            "coupon_redemptions": {"rows": 2, "days": [5, 9]},
        }

    def test_no_plans_no_entries(self) -> None:
        assert self.check(Plans()).plans == {}

    def test_an_absent_table_is_left_out(self) -> None:
        plans = literal_plans()
        report = self.check(Plans(promotions=plans.promotions, coupons=plans.coupons))
        assert sorted(report.plans) == ["coupons", "promotions"]

    def test_an_empty_plan_table_is_valid(self) -> None:
        """Nothing redeemed is a fact, not an error (unlike empty transactions)."""
        redeemed = literal_plans().coupon_redemptions
        assert redeemed is not None
        report = self.check(literal_plans(coupon_redemptions=redeemed.clear()))
        assert report.plans["coupon_redemptions"] == {"rows": 0}

    def test_reversed_period_names_the_end_day(self) -> None:
        periods = pl.LazyFrame(
            {C.CAMPAIGN: [1, 2, 3], C.START_DAY: [1, 30, 40], C.END_DAY: [9, 29, 39]},
            schema_overrides={C.START_DAY: pl.Int32, C.END_DAY: pl.Int32},
        ).with_columns(pl.lit(None, dtype=pl.String).alias(C.CAMPAIGN_TYPE))
        with pytest.raises(DataError, match="2 campaign period\\(s\\) end before") as info:
            self.check(literal_plans(campaign_periods=periods))
        assert info.value.column == C.END_DAY
        assert info.value.file == "t campaign_periods"
        assert "campaign_id 2" in str(info.value)

    def test_null_key_in_a_plan_table(self) -> None:
        campaigns = pl.LazyFrame({C.CAMPAIGN: [1, None], C.USER: [1, 2]}, schema=C.CAMPAIGNS)
        with pytest.raises(DataError, match="campaigns: 1 row\\(s\\) have no 'campaign_id'"):
            self.check(literal_plans(campaigns=campaigns))

    def test_negative_user_in_campaigns(self) -> None:
        campaigns = pl.LazyFrame({C.CAMPAIGN: [1, 1], C.USER: [1, -2]}, schema=C.CAMPAIGNS)
        with pytest.raises(DataError, match="campaigns: 1 row\\(s\\) have a negative"):
            self.check(literal_plans(campaigns=campaigns))

    def test_misspelled_plan_column_in_a_file(self, tmp_path: Path) -> None:
        transactions().collect().write_parquet(tmp_path / "tx.parquet")
        (tmp_path / "promo.csv").write_text("item_id,store_id,weeks,display\n1,1,2,A\n")
        cfg = DataConfig(
            source="files",
            transactions_file=tmp_path / "tx.parquet",
            promotions_file=tmp_path / "promo.csv",
        )
        with pytest.raises(SchemaMismatchError, match="did you mean 'weeks'") as info:
            validation.check(sources.load_dataset(cfg), SETTINGS)
        assert info.value.file == str(tmp_path / "promo.csv")
        assert info.value.column == C.WEEK

    def test_plan_value_that_cannot_be_cast(self, tmp_path: Path) -> None:
        transactions().collect().write_parquet(tmp_path / "tx.parquet")
        (tmp_path / "redeemed.csv").write_text("user_id,day\n1,5\n2,day9\n")
        cfg = DataConfig(
            source="files",
            transactions_file=tmp_path / "tx.parquet",
            coupon_redemptions_file=tmp_path / "redeemed.csv",
        )
        with pytest.raises(SchemaMismatchError, match="'day9'") as info:
            validation.check(sources.load_dataset(cfg), SETTINGS)
        assert info.value.column == C.DAY

    def test_still_one_collect(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The plan tables join the single ``collect_all``: their checks and their ranges."""
        calls = []
        real = pl.collect_all

        def counting(frames: list[pl.LazyFrame], **kwargs: Any) -> list[pl.DataFrame]:
            calls.append(len(frames))
            return real(frames, **kwargs)

        monkeypatch.setattr(pl, "collect_all", counting)
        self.check(literal_plans())
        assert calls == [12]  # 6 tables, the transaction stats, 5 plan ranges


@pytest.mark.slow
def test_bundled_plans_report() -> None:
    report = validation.check(sources.load_dataset(DataConfig()), SETTINGS)
    assert report.plans == {
        "promotions": {"rows": 20_940_529, "weeks": [1, 53]},
        "campaigns": {"rows": 6_589},
        "campaign_periods": {"rows": 27, "days": [-47, 424]},
        "coupons": {"rows": 116_204},
        "coupon_redemptions": {"rows": 2_102, "days": [1, 365]},
    }
