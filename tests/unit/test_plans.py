"""Plan tables (issue #26): every source gives the same canonical frames on the data's time axis."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import DataConfig
from recsys_batch.data import columns as C
from recsys_batch.data import plans, sources, synthetic, synthetic_plans
from recsys_batch.data.tables import PLAN_TABLES
from recsys_batch.errors import DataError

TX_CSV = """household_key,BASKET_ID,DAY,PRODUCT_ID,QUANTITY,SALES_VALUE,STORE_ID,WEEK_NO
7,1,1,101,1,1.39,364,1
8,2,9,102,1,0.82,364,2
"""
CAUSAL_CSV = """PRODUCT_ID,STORE_ID,WEEK_NO,display,mailer
101,364,1,0,A
102,364,2,9,0
102,365,2,A,D
"""
CAMPAIGN_TABLE_CSV = """DESCRIPTION,household_key,CAMPAIGN
TypeA,7,1
TypeB,8,2
"""
CAMPAIGN_DESC_CSV = """DESCRIPTION,CAMPAIGN,START_DAY,END_DAY
TypeA,1,-5,30
TypeB,2,8,40
"""
COUPON_CSV = """COUPON_UPC,PRODUCT_ID,CAMPAIGN
10000085207,101,1
10000085207,102,1
51800000050,102,2
"""
REDEMPT_CSV = """household_key,DAY,COUPON_UPC,CAMPAIGN
7,1,10000085207,1
8,9,51800000050,2
"""
CLASSIC_PLANS = {
    "causal_data.csv": CAUSAL_CSV,
    "campaign_table.csv": CAMPAIGN_TABLE_CSV,
    "campaign_desc.csv": CAMPAIGN_DESC_CSV,
    "coupon.csv": COUPON_CSV,
    "coupon_redempt.csv": REDEMPT_CSV,
}

EXPECTED = {
    "promotions": pl.DataFrame(
        {
            C.ITEM: [101, 102, 102],
            C.STORE: [364, 364, 365],
            C.WEEK: [1, 2, 2],
            C.DISPLAY: ["0", "9", "A"],
            C.MAILER: ["A", "0", "D"],
            C.ON_DISPLAY: [False, True, True],
            C.ON_MAILER: [True, False, True],
        },
        schema=C.PROMOTIONS,
    ),
    "campaigns": pl.DataFrame({C.CAMPAIGN: [1, 2], C.USER: [7, 8]}, schema=C.CAMPAIGNS),
    "campaign_periods": pl.DataFrame(
        {
            C.CAMPAIGN: [1, 2],
            C.CAMPAIGN_TYPE: ["TypeA", "TypeB"],
            C.START_DAY: [-5, 8],  # the transactions' own day numbers, taken as they are
            C.END_DAY: [30, 40],
        },
        schema=C.CAMPAIGN_PERIODS,
    ),
    "coupons": pl.DataFrame(
        {
            C.CAMPAIGN: [1, 1, 2],
            C.COUPON: [10000085207, 10000085207, 51800000050],
            C.ITEM: [101, 102, 102],
        },
        schema=C.COUPONS,
    ),
    "coupon_redemptions": pl.DataFrame(
        {
            C.USER: [7, 8],
            C.CAMPAIGN: [1, 2],
            C.COUPON: [10000085207, 51800000050],
            C.ITEM: [None, None],
            C.DAY: [1, 9],
        },
        schema=C.COUPON_REDEMPTIONS,
    ),
}


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def assert_plans(found: plans.Plans, expected: dict[str, pl.DataFrame]) -> None:
    frames = found.frames()
    assert sorted(frames) == sorted(expected)
    for table, frame in frames.items():
        assert frame.collect_schema() == expected[table].schema, table
        assert_frame_equal(frame.collect(), expected[table], check_row_order=False)


@pytest.mark.parametrize(
    ("display", "on_display"),
    [("0", False), ("A", True), ("9", True), (None, False), ("false", False), ("False", False),
     ("True", True), ("true", True), ("", False)],
)  # fmt: skip
def test_promotion_flags_of_files(display: str | None, on_display: bool) -> None:
    """A code of "0" (or a boolean false, or nothing) is "not on display"; any other is on."""
    codes = pl.LazyFrame(
        {C.DISPLAY: [display], C.MAILER: [display]},
        schema=dict.fromkeys((C.DISPLAY, C.MAILER), pl.String),
    )
    flagged = plans.promotion_flags(codes, plans.FILE_NOT_PROMOTED)
    assert flagged.select(C.ON_DISPLAY, C.ON_MAILER).collect().row(0) == (on_display, on_display)


def test_promotion_flags_of_location_codes() -> None:
    """Bundled, classic and synthetic codes: only "0" (or nothing) means "no"."""
    codes = pl.LazyFrame({C.DISPLAY: ["0", "A", None, "9"], C.MAILER: ["D", "0", "0", "Z"]})
    flags = plans.promotion_flags(codes).select(C.ON_DISPLAY, C.ON_MAILER).collect().rows()
    assert flags == [(False, True), (True, False), (False, False), (True, True)]


class TestDunnhumby:
    def test_classic_plan_files_give_the_canonical_tables(self, tmp_path: Path) -> None:
        folder = write(tmp_path, {"transaction_data.csv": TX_CSV, **CLASSIC_PLANS})
        dataset = sources.load_dataset(DataConfig(source="dunnhumby", path=folder))
        assert_plans(dataset.plans, EXPECTED)
        assert {t.table for t in dataset.tables} >= set(PLAN_TABLES)

    def test_columns_are_matched_ignoring_case(self, tmp_path: Path) -> None:
        lower = {"causal_data.csv": CAUSAL_CSV.replace("PRODUCT_ID", "product_id")}
        folder = write(tmp_path, {"transaction_data.csv": TX_CSV, **lower})
        dataset = sources.load_dataset(DataConfig(source="dunnhumby", path=folder))
        assert_plans(dataset.plans, {"promotions": EXPECTED["promotions"]})

    def test_absent_plan_files_mean_no_plans(self, tmp_path: Path) -> None:
        folder = write(tmp_path, {"transaction_data.csv": TX_CSV})
        dataset = sources.load_dataset(DataConfig(source="dunnhumby", path=folder))
        assert dataset.plans.frames() == {}
        assert dataset.plans.promotions is None

    def test_tables_are_lazy(self, tmp_path: Path) -> None:
        """Opening the source reads headers only: a bad value surfaces when collected."""
        bad = {"causal_data.csv": CAUSAL_CSV.replace("364,2", "oops,2")}
        folder = write(tmp_path, {"transaction_data.csv": TX_CSV, **bad})
        dataset = sources.load_dataset(DataConfig(source="dunnhumby", path=folder))
        assert dataset.plans.promotions is not None
        with pytest.raises(pl.exceptions.InvalidOperationError):
            dataset.plans.promotions.collect()


class TestFiles:
    MAPPING = {
        "user_id": "household_key",
        "day": "DAY",
        "item_id": "PRODUCT_ID",
        "store_id": "STORE_ID",
        "week": "WEEK_NO",
        "quantity": "QUANTITY",
        "sales_value": "SALES_VALUE",
        "basket_id": "BASKET_ID",
        "campaign_id": "CAMPAIGN",
        "coupon_id": "COUPON_UPC",
        "start_day": "START_DAY",
        "end_day": "END_DAY",
        "campaign_periods.campaign_type": "DESCRIPTION",
    }

    def config(self, folder: Path, **files: Path) -> DataConfig:
        return DataConfig(
            source="files",
            transactions_file=folder / "transaction_data.csv",
            column_mapping=self.MAPPING,
            **files,
        )

    def test_mapping_applies_to_the_plan_files(self, tmp_path: Path) -> None:
        folder = write(tmp_path, {"transaction_data.csv": TX_CSV, **CLASSIC_PLANS})
        cfg = self.config(
            folder,
            promotions_file=folder / "causal_data.csv",
            campaigns_file=folder / "campaign_table.csv",
            campaign_periods_file=folder / "campaign_desc.csv",
            coupons_file=folder / "coupon.csv",
            coupon_redemptions_file=folder / "coupon_redempt.csv",
        )
        assert_plans(sources.load_dataset(cfg).plans, EXPECTED)

    def test_parquet_booleans_become_flags(self, tmp_path: Path) -> None:
        """A calendar of booleans (no location codes) reads as the flags it states."""
        write(tmp_path, {"transaction_data.csv": TX_CSV})
        pl.DataFrame(
            {"PRODUCT_ID": [101, 102], "STORE_ID": [1, 1], "WEEK_NO": [3, 3],
             "display": [True, False], "mailer": [False, True]}
        ).write_parquet(tmp_path / "promo.parquet")  # fmt: skip
        found = sources.load_dataset(
            self.config(tmp_path, promotions_file=tmp_path / "promo.parquet")
        )
        assert found.plans.promotions is not None
        flags = found.plans.promotions.select(C.ON_DISPLAY, C.ON_MAILER).collect().rows()
        assert flags == [(True, False), (False, True)]

    def test_missing_plan_file_names_the_config_field(self, tmp_path: Path) -> None:
        write(tmp_path, {"transaction_data.csv": TX_CSV})
        cfg = self.config(tmp_path, coupons_file=tmp_path / "absent.csv")
        with pytest.raises(DataError, match="coupons file not found") as info:
            sources.load_dataset(cfg)
        assert info.value.file == str(tmp_path / "absent.csv")
        assert "data.coupons_file" in info.value.fix

    def test_unknown_plan_mapping_key_suggests_the_name(self, tmp_path: Path) -> None:
        write(tmp_path, {"transaction_data.csv": TX_CSV})
        cfg = DataConfig(
            source="files",
            transactions_file=tmp_path / "transaction_data.csv",
            column_mapping={**self.MAPPING, "campaign_idd": "CAMPAIGN"},
        )
        with pytest.raises(DataError, match="did you mean 'campaign_id'"):
            sources.load_dataset(cfg)


class TestSynthetic:
    def test_written_folder_reads_back_as_generated(self, tmp_path: Path) -> None:
        synthetic.write_synthetic(tmp_path, users=60, seed=5)
        dataset = sources.load_dataset(DataConfig(source="synthetic", path=tmp_path))
        generated = synthetic_plans.generate(synthetic.plan_inputs(60, 5))
        expected = plans.plans_of({t: f.lazy() for t, f in generated.items()})
        assert_plans(dataset.plans, {t: f.collect() for t, f in expected.frames().items()})

    def test_in_memory_source_has_the_same_plans(self, tmp_path: Path) -> None:
        synthetic.write_synthetic(tmp_path, users=40, seed=3)
        on_disk = sources.load_dataset(DataConfig(source="synthetic", path=tmp_path))
        in_memory = sources.load_dataset(
            DataConfig(source="synthetic", synthetic_users=40, synthetic_seed=3)
        )
        assert_plans(in_memory.plans, {t: f.collect() for t, f in on_disk.plans.frames().items()})

    def test_folder_without_plan_files_has_no_plans(self, tmp_path: Path) -> None:
        synthetic.write_synthetic(tmp_path, users=20, seed=1)
        for name in plans.SYNTH_PLAN_FILES.values():
            path = tmp_path / name
            if path.is_dir():
                for part in path.iterdir():
                    part.unlink()
                path.rmdir()
            else:
                path.unlink()
        dataset = sources.load_dataset(DataConfig(source="synthetic", path=tmp_path))
        assert dataset.plans.frames() == {}


def test_plan_fields_are_the_plan_tables() -> None:
    """Readers build ``Plans(**{table: frame})``: a renamed field would drop a table."""
    assert tuple(field.name for field in fields(plans.Plans)) == PLAN_TABLES


def test_completejourney_plan_schemas() -> None:
    found = sources.load_dataset(DataConfig()).plans
    schemas = {t: f.collect_schema() for t, f in found.frames().items()}
    assert schemas == {
        "promotions": C.PROMOTIONS,
        "campaigns": C.CAMPAIGNS,
        "campaign_periods": C.CAMPAIGN_PERIODS,
        "coupons": C.COUPONS,
        "coupon_redemptions": C.COUPON_REDEMPTIONS,
    }


@pytest.mark.slow
class TestBundledAlignment:
    """The bundled plans on the transactions' axis (the mutation: a day or week off by one)."""

    @pytest.fixture(scope="class")
    def dataset(self) -> sources.Dataset:
        return sources.load_dataset(DataConfig())

    def test_known_campaign_periods(self, dataset: sources.Dataset) -> None:
        """Campaign 1 runs 2017-03-03..04-09 and campaign 24 began 2016-11-14 (day 1 = 01-01)."""
        assert dataset.plans.campaign_periods is not None
        periods = dataset.plans.campaign_periods.filter(pl.col(C.CAMPAIGN).is_in([1, 24]))
        rows = periods.sort(C.CAMPAIGN).collect().rows()
        assert rows == [(1, "Type B", 62, 99), (24, "Type C", -47, 16)]
        # Every period overlaps the transactions' days 1..366.
        overlapping = dataset.plans.campaign_periods.filter(
            (pl.col(C.END_DAY) >= 1) & (pl.col(C.START_DAY) <= 366)
        )
        assert overlapping.select(pl.len()).collect().item() == 27

    def test_redemptions_fall_on_coupon_days_inside_their_periods(
        self, dataset: sources.Dataset
    ) -> None:
        """1,680 of 2,102 redemptions share their day with a coupon discount of the household.

        Shifted by one day either way only 31 or 286 would; every redemption lies inside its
        campaign's period.
        """
        redeemed = dataset.plans.coupon_redemptions
        periods = dataset.plans.campaign_periods
        assert redeemed is not None
        assert periods is not None
        coupon_days = (
            dataset.transactions.filter(pl.col(C.COUPON_DISC) > 0).select(C.USER, C.DAY).unique()
        )

        def on_coupon_days(shift: int) -> int:
            shifted = redeemed.with_columns(pl.col(C.DAY) + shift)
            matched = shifted.join(coupon_days, on=[C.USER, C.DAY], how="semi")
            return int(matched.select(pl.len()).collect().item())

        assert [on_coupon_days(s) for s in (-1, 0, 1)] == [31, 1_680, 286]
        inside = redeemed.join(periods, on=C.CAMPAIGN).filter(
            pl.col(C.DAY).is_between(pl.col(C.START_DAY), pl.col(C.END_DAY))
        )
        assert inside.select(pl.len()).collect().item() == 2_102

    def test_promotion_weeks_are_the_transaction_weeks(self, dataset: sources.Dataset) -> None:
        """Lines whose item was promoted in their store and week: 327,041; ~232k a week off."""
        promotions = dataset.plans.promotions
        assert promotions is not None
        weeks = promotions.select(pl.col(C.WEEK).unique().sort()).collect().to_series()
        assert weeks.to_list() == list(range(1, 54))
        keys = [C.ITEM, C.STORE, C.WEEK]

        def promoted_lines(shift: int) -> int:
            shifted = promotions.select(*keys).with_columns(pl.col(C.WEEK) + shift)
            lines = dataset.transactions.select(keys).join(shifted, on=keys, how="semi")
            return int(lines.select(pl.len()).collect().item())

        assert [promoted_lines(s) for s in (-1, 0, 1)] == [231_928, 327_041, 233_243]

    def test_known_promotion_row(self, dataset: sources.Dataset) -> None:
        assert dataset.plans.promotions is not None
        row = dataset.plans.promotions.filter(
            (pl.col(C.ITEM) == 1000050) & (pl.col(C.STORE) == 316) & (pl.col(C.WEEK) == 1)
        ).collect()
        assert row.rows() == [(1000050, 316, 1, "9", "0", True, False)]


@pytest.mark.parametrize("source", ["completejourney", "dunnhumby"])
def test_loading_collects_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """The plans stay lazy scans until a query needs them (bundled promotions: 20.9M rows)."""
    folder = write(tmp_path, {"transaction_data.csv": TX_CSV, **CLASSIC_PLANS})

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("loading must not collect")

    monkeypatch.setattr(pl.LazyFrame, "collect", forbidden)
    monkeypatch.setattr(pl, "collect_all", forbidden)
    cfg = DataConfig(source=source, path=folder if source == "dunnhumby" else None)
    found = sources.load_dataset(cfg).plans.frames()
    assert sorted(found) == sorted(PLAN_TABLES)
    assert all(isinstance(frame, pl.LazyFrame) for frame in found.values())
