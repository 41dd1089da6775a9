"""``recsys data``: a corpus of malformed inputs, each a clear exit-2 error; the happy paths."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()

TX_UPPER = (
    "household_key",
    "BASKET_ID",
    "DAY",
    "PRODUCT_ID",
    "QUANTITY",
    "SALES_VALUE",
    "STORE_ID",
    "RETAIL_DISC",
    "TRANS_TIME",
    "WEEK_NO",
    "COUPON_DISC",
    "COUPON_MATCH_DISC",
)


def classic_frames(weeks: int = 20) -> dict[str, pl.DataFrame]:
    """A small valid dataset in the classic upper-case layout, every value a string.

    8 households, 6 products in 2 departments, one basket per household and week with 3 lines.
    """
    rows = []
    basket = 100
    for week in range(1, weeks + 1):
        for user in range(1, 9):
            basket += 1
            for k in range(3):
                item = 1001 + (user + k + week) % 6
                rows.append(
                    {
                        "household_key": str(user),
                        "BASKET_ID": str(basket),
                        "DAY": str((week - 1) * 7 + 1 + user % 7),
                        "PRODUCT_ID": str(item),
                        "QUANTITY": str(1 + k % 2),
                        "SALES_VALUE": f"{1.5 + k:.2f}",
                        "STORE_ID": "364",
                        "RETAIL_DISC": "-0.30" if k == 0 else "0.00",
                        "TRANS_TIME": "1631",
                        "WEEK_NO": str(week),
                        "COUPON_DISC": "0.00",
                        "COUPON_MATCH_DISC": "0.00",
                    }
                )
    products = pl.DataFrame(
        {
            "PRODUCT_ID": [str(1001 + i) for i in range(6)],
            "MANUFACTURER": ["69", "2", "69", "5", "2", "69"],
            "DEPARTMENT": ["GROCERY"] * 4 + ["PRODUCE"] * 2,
            "BRAND": ["Private", "National"] * 3,
            "COMMODITY_DESC": ["SOUP", "SOUP", "MILK", "MILK", "FRUIT", "FRUIT"],
            "SUB_COMMODITY_DESC": ["A", "B", "C", "D", "E", "F"],
            "CURR_SIZE_OF_PRODUCT": ["16 OZ", "", "1 GA", "1 GA", "", ""],
        }
    )
    households = pl.DataFrame(
        {
            "AGE_DESC": ["65+", "45-54"],
            "MARITAL_STATUS_CODE": ["A", "B"],
            "INCOME_DESC": ["35-49K", "50-74K"],
            "HOMEOWNER_DESC": ["Homeowner", "Unknown"],
            "HH_COMP_DESC": ["2 Adults No Kids", "Single Female"],
            "HOUSEHOLD_SIZE_DESC": ["2", "1"],
            "KID_CATEGORY_DESC": ["None/Unknown", "None/Unknown"],
            "household_key": ["1", "7"],
        }
    )
    return {
        "transaction_data.csv": pl.DataFrame(rows, schema=dict.fromkeys(TX_UPPER, pl.String)),
        "product.csv": products,
        "hh_demographic.csv": households,
    }


def write_dir(folder: Path, frames: dict[str, pl.DataFrame]) -> Path:
    """Write the frames as CSV files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.write_csv(folder / name)
    return folder


def squash(text: str) -> str:
    """Drop whitespace, so a path or name wrapped by rich still matches."""
    return re.sub(r"\s+", "", text)


def set_value(file: str, column: str, row: int, value: str | None) -> Callable:
    def mutate(frames: dict[str, pl.DataFrame]) -> None:
        frame = frames[file]
        values = frame.get_column(column).to_list()
        values[row] = value
        frames[file] = frame.with_columns(pl.Series(column, values, dtype=pl.String))

    return mutate


def rename(file: str, old: str, new: str) -> Callable:
    def mutate(frames: dict[str, pl.DataFrame]) -> None:
        frames[file] = frames[file].rename({old: new})

    return mutate


def drop(file: str, column: str) -> Callable:
    def mutate(frames: dict[str, pl.DataFrame]) -> None:
        frames[file] = frames[file].drop(column)

    return mutate


def empty(file: str) -> Callable:
    def mutate(frames: dict[str, pl.DataFrame]) -> None:
        frames[file] = frames[file].clear()

    return mutate


def remove(file: str) -> Callable:
    def mutate(frames: dict[str, pl.DataFrame]) -> None:
        del frames[file]

    return mutate


def few_weeks(frames: dict[str, pl.DataFrame]) -> None:
    frames["transaction_data.csv"] = classic_frames(weeks=8)["transaction_data.csv"]


# (case id, mutation of the valid classic dataset, file named, column named, extra text)
DUNNHUMBY_CORPUS = [
    ("no-transactions-file", remove("transaction_data.csv"), "transaction_data.csv", "BASKET_ID",
     ""),
    ("missing-key-column", drop("transaction_data.csv", "PRODUCT_ID"), "transaction_data.csv",
     "PRODUCT_ID", "missing"),
    ("misspelled-key-column", rename("transaction_data.csv", "WEEK_NO", "WEEK_NUMBER"),
     "transaction_data.csv", "WEEK_NO", "WEEK_NUMBER"),
    ("misspelled-optional-column", rename("transaction_data.csv", "STORE_ID", "STORE_IDD"),
     "transaction_data.csv", "STORE_IDD", "STORE_ID"),
    ("quantity-not-a-number", set_value("transaction_data.csv", "QUANTITY", 7, "two"),
     "transaction_data.csv", "QUANTITY", "two"),
    ("sales-with-comma", set_value("transaction_data.csv", "SALES_VALUE", 3, "1,25"),
     "transaction_data.csv", "SALES_VALUE", "1,25"),
    ("null-user-key", set_value("transaction_data.csv", "household_key", 0, None),
     "transaction_data.csv", "household_key", "no"),
    ("null-day", set_value("transaction_data.csv", "DAY", 5, None), "transaction_data.csv",
     "DAY", ""),
    ("empty-transactions", empty("transaction_data.csv"), "transaction_data.csv", "PRODUCT_ID",
     "no rows"),
    ("too-few-weeks", few_weeks, "transaction_data.csv", "WEEK_NO", "history week"),
    ("product-without-id", drop("product.csv", "PRODUCT_ID"), "product.csv", "PRODUCT_ID", ""),
    ("product-null-id", set_value("product.csv", "PRODUCT_ID", 2, None), "product.csv",
     "PRODUCT_ID", ""),
    ("manufacturer-not-int", set_value("product.csv", "MANUFACTURER", 1, "ACME"), "product.csv",
     "MANUFACTURER", "ACME"),
    ("household-key-misspelled", rename("hh_demographic.csv", "household_key", "househld_key"),
     "hh_demographic.csv", "household_key", "househld_key"),
    ("empty-products", empty("product.csv"), "product.csv", "PRODUCT_ID", "no rows"),
]  # fmt: skip


def assert_clean_error(result, file: str, column: str, extra: str = "") -> None:
    """Exit code 2, one error naming file and column (and the fix), no traceback."""
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert "error:" in output
    assert squash(file) in squash(output), output
    field = re.search(r"column:(.*?)\|fix:", squash(output))
    assert field is not None, output
    assert column in field.group(1).split(","), output
    assert "fix:" in output
    if extra:
        assert squash(extra) in squash(output), output


@pytest.mark.parametrize(
    ("mutate", "file", "column", "extra"),
    [case[1:] for case in DUNNHUMBY_CORPUS],
    ids=[case[0] for case in DUNNHUMBY_CORPUS],
)
@pytest.mark.parametrize("command", ["validate", "prefilter"])
def test_malformed_dunnhumby_exits_2(
    tmp_path: Path, command: str, mutate: Callable, file: str, column: str, extra: str
) -> None:
    frames = classic_frames()
    mutate(frames)
    folder = write_dir(tmp_path / "dh", frames)
    result = runner.invoke(app, ["data", command, "--source", "dunnhumby", "--path", str(folder)])
    assert_clean_error(result, file, column, extra)


def test_missing_directory_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = runner.invoke(
        app, ["data", "validate", "--source", "dunnhumby", "--path", str(missing)]
    )
    assert_clean_error(result, str(missing), "PRODUCT_ID")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    frames = classic_frames()
    drop("transaction_data.csv", "PRODUCT_ID")(frames)
    folder = write_dir(tmp_path / "dh", frames)
    args = ["data", "validate", "--source", "dunnhumby", "--path", str(folder), "--debug"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "Traceback" in result.output


def write_files_source(tmp_path: Path, mapping: dict[str, str], suffix: str = ".csv") -> Path:
    """The classic transactions as a single file for the ``files`` source, plus a config."""
    tx = classic_frames()["transaction_data.csv"]
    path = tmp_path / f"tx{suffix}"
    if suffix == ".csv":
        tx.write_csv(path)
    elif suffix == ".parquet":
        tx.write_parquet(path)
    else:
        path.write_text("not a table")
    lines = ["[data]", 'source = "files"', f'transactions_file = "{path}"', "[data.column_mapping]"]
    lines += [f'{k} = "{v}"' for k, v in mapping.items()]
    config = tmp_path / "recsys.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


FILES_MAPPING = {
    "user_id": "household_key",
    "basket_id": "BASKET_ID",
    "day": "DAY",
    "item_id": "PRODUCT_ID",
    "quantity": "QUANTITY",
    "sales_value": "SALES_VALUE",
    "store_id": "STORE_ID",
    "retail_disc": "RETAIL_DISC",
    "trans_time": "TRANS_TIME",
    "week": "WEEK_NO",
    "coupon_disc": "COUPON_DISC",
    "coupon_match_disc": "COUPON_MATCH_DISC",
}


@pytest.mark.parametrize(
    ("mapping", "suffix", "file", "column"),
    [
        ({**FILES_MAPPING, "item_idd": "PRODUCT_ID"}, ".csv", "column_mapping", "item_idd"),
        ({**FILES_MAPPING, "item_id": "SKU"}, ".csv", "tx.csv", "SKU"),
        (FILES_MAPPING, ".xlsx", "tx.xlsx", "user_id"),
        ({**FILES_MAPPING, "week": "week"}, ".parquet", "tx.parquet", "week"),
    ],
    ids=["unknown-mapping-key", "mapped-column-absent", "unsupported-file-type", "parquet-no-week"],
)
def test_malformed_files_source_exits_2(
    tmp_path: Path, mapping: dict[str, str], suffix: str, file: str, column: str
) -> None:
    config = write_files_source(tmp_path, mapping, suffix)
    result = runner.invoke(app, ["data", "validate", "--config", str(config)])
    assert_clean_error(result, file, column)


def test_files_source_missing_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "absent.parquet"
    result = runner.invoke(app, ["data", "validate", "--source", "files", "--path", str(missing)])
    assert_clean_error(result, str(missing), "user_id")


def test_synthetic_folder_without_data_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["data", "validate", "--source", "synthetic", "--path", str(tmp_path)]
    )
    assert_clean_error(result, "transactions", "user_id")


def test_files_source_with_mapping_validates(tmp_path: Path) -> None:
    config = write_files_source(tmp_path, FILES_MAPPING, ".parquet")
    result = runner.invoke(app, ["data", "validate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "480" in result.output  # 20 weeks x 8 households x 3 lines


class TestPrefilterCommand:
    def test_dunnhumby_funnel_has_every_rule(self, tmp_path: Path) -> None:
        folder = write_dir(tmp_path / "dh", classic_frames())
        out = tmp_path / "funnel.json"
        args = ["data", "prefilter", "--source", "dunnhumby", "--path", str(folder)]
        result = runner.invoke(app, [*args, "--json", str(out)])
        assert result.exit_code == 0, result.output
        for rule in ("all", "recent", "popularity", "department", "price", "top_n"):
            assert rule in result.output
        payload = json.loads(out.read_text())
        assert [row["rule"] for row in payload["funnel"]] == [
            "all",
            "recent",
            "popularity",
            "department",
            "price",
            "top_n",
        ]
        # Backtest: the test window (week >= W - test_weeks = 17) is left out.
        assert payload["weeks"] == [1, 16]
        assert payload["funnel"][0]["rows"] == 16 * 8 * 3
        # Every product is bought by more than 20% of the 8 households: none survives.
        assert payload["catalogue_items"] == 0

    def test_production_mode_uses_all_weeks(self, tmp_path: Path) -> None:
        folder = write_dir(tmp_path / "dh", classic_frames())
        out = tmp_path / "funnel.json"
        args = ["data", "prefilter", "--source", "dunnhumby", "--path", str(folder)]
        result = runner.invoke(app, [*args, "--mode", "production", "--json", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["funnel"][0]["rows"] == 20 * 8 * 3

    def test_bad_mode_exits_2(self, tmp_path: Path) -> None:
        folder = write_dir(tmp_path / "dh", classic_frames())
        args = ["data", "prefilter", "--source", "dunnhumby", "--path", str(folder)]
        result = runner.invoke(app, [*args, "--mode", "sometimes"])
        assert result.exit_code == 2
        assert "--mode" in result.output

    def test_note_when_fewer_items_than_top_n(self, tmp_path: Path) -> None:
        folder = write_dir(tmp_path / "dh", classic_frames())
        args = ["data", "prefilter", "--source", "dunnhumby", "--path", str(folder)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "fewer than top_n" in " ".join(result.output.split())

    @pytest.mark.slow
    def test_bundled_funnel(self, tmp_path: Path) -> None:
        out = tmp_path / "funnel.json"
        result = runner.invoke(app, ["data", "prefilter", "--json", str(out)])
        assert result.exit_code == 0, result.output
        items = [row["items"] for row in json.loads(out.read_text())["funnel"]]
        assert items[2:] == [3489, 3474, 2826, 2500]


class TestValidateCommand:
    def test_returns_are_dropped_and_counted(self, tmp_path: Path) -> None:
        frames = classic_frames()
        set_value("transaction_data.csv", "QUANTITY", 0, "-1")(frames)
        set_value("transaction_data.csv", "SALES_VALUE", 4, "-2.50")(frames)
        set_value("transaction_data.csv", "QUANTITY", 9, "0")(frames)  # weighed: kept
        folder = write_dir(tmp_path / "dh", frames)
        out = tmp_path / "report.json"
        args = ["data", "validate", "--source", "dunnhumby", "--path", str(folder)]
        result = runner.invoke(app, [*args, "--json", str(out)])
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        assert report["dropped_returns"] == 2
        assert report["rows"] == 480

    def test_items_absent_from_item_table_warn(self, tmp_path: Path) -> None:
        frames = classic_frames()
        frames["product.csv"] = frames["product.csv"].head(4)
        folder = write_dir(tmp_path / "dh", frames)
        out = tmp_path / "report.json"
        args = ["data", "validate", "--source", "dunnhumby", "--path", str(folder)]
        result = runner.invoke(app, [*args, "--json", str(out)])
        assert result.exit_code == 0, result.output
        assert "WARNING" in result.output
        assert "2 item(s)" in result.output
        assert json.loads(out.read_text())["missing_items"] == 2

    def test_without_optional_files(self, tmp_path: Path) -> None:
        frames = classic_frames()
        del frames["product.csv"], frames["hh_demographic.csv"]
        folder = write_dir(tmp_path / "dh", frames)
        out = tmp_path / "report.json"
        args = ["data", "validate", "--source", "dunnhumby", "--path", str(folder)]
        result = runner.invoke(app, [*args, "--json", str(out)])
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        assert report["item_rows"] is None
        assert report["user_rows"] is None


class TestSynthCommand:
    def test_writes_readable_data(self, tmp_path: Path) -> None:
        out = tmp_path / "synth"
        result = runner.invoke(
            app, ["data", "synth", "--users", "120", "--seed", "3", "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["users"] == 120
        assert manifest["seed"] == 3
        report = tmp_path / "report.json"
        args = ["data", "validate", "--source", "synthetic", "--path", str(out)]
        result = runner.invoke(app, [*args, "--json", str(report)])
        assert result.exit_code == 0, result.output
        assert json.loads(report.read_text())["rows"] == manifest["rows"]

    def test_refuses_to_overwrite_without_flag(self, tmp_path: Path) -> None:
        out = tmp_path / "synth"
        args = ["data", "synth", "--users", "30", "--out", str(out)]
        assert runner.invoke(app, args).exit_code == 0
        again = runner.invoke(app, args)
        assert_clean_error(again, "transactions", "user_id", "--overwrite")
        assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def classic_plans() -> dict[str, pl.DataFrame]:
    """Classic plan CSVs matching :func:`classic_frames`: store 364, weeks 1..20, days 1..140."""
    causal = pl.DataFrame(
        {
            "PRODUCT_ID": ["1001", "1002", "1003"] * 2,
            "STORE_ID": ["364"] * 6,
            "WEEK_NO": ["1", "1", "2", "19", "20", "20"],
            "display": ["0", "5", "A", "0", "9", "0"],
            "mailer": ["A", "0", "D", "H", "0", "A"],
        }
    )
    return {
        "causal_data.csv": causal,
        "campaign_table.csv": pl.DataFrame(
            {"DESCRIPTION": ["TypeA", "TypeA", "TypeB"], "household_key": ["1", "2", "3"],
             "CAMPAIGN": ["1", "1", "2"]}
        ),
        "campaign_desc.csv": pl.DataFrame(
            {"DESCRIPTION": ["TypeA", "TypeB"], "CAMPAIGN": ["1", "2"], "START_DAY": ["-6", "30"],
             "END_DAY": ["40", "75"]}
        ),
        "coupon.csv": pl.DataFrame(
            {"COUPON_UPC": ["10000085207", "10000085207", "51800000050"],
             "PRODUCT_ID": ["1001", "1002", "1004"], "CAMPAIGN": ["1", "1", "2"]}
        ),
        "coupon_redempt.csv": pl.DataFrame(
            {"household_key": ["1", "3"], "DAY": ["9", "31"],
             "COUPON_UPC": ["10000085207", "51800000050"], "CAMPAIGN": ["1", "2"]}
        ),
    }  # fmt: skip


# (case id, mutation of the valid classic dataset with plans, file named, column named, extra)
PLAN_CORPUS = [
    ("causal-without-week", drop("causal_data.csv", "WEEK_NO"), "causal_data.csv", "WEEK_NO",
     "missing"),
    ("causal-misspelled-display", rename("causal_data.csv", "display", "displya"),
     "causal_data.csv", "displya", "display"),
    ("causal-week-not-a-number", set_value("causal_data.csv", "WEEK_NO", 2, "wk2"),
     "causal_data.csv", "WEEK_NO", "wk2"),
    ("campaign-null-household", set_value("campaign_table.csv", "household_key", 0, None),
     "campaign_table.csv", "household_key", "no"),
    ("period-ends-before-it-starts", set_value("campaign_desc.csv", "END_DAY", 1, "20"),
     "campaign_desc.csv", "END_DAY", "before they start"),
    ("coupon-upc-not-a-number", set_value("coupon.csv", "COUPON_UPC", 1, "UPC-1"), "coupon.csv",
     "COUPON_UPC", "UPC-1"),
    ("redemption-day-not-a-number", set_value("coupon_redempt.csv", "DAY", 0, "x"),
     "coupon_redempt.csv", "DAY", "'x'"),
    ("redemption-negative-household", set_value("coupon_redempt.csv", "household_key", 1, "-4"),
     "coupon_redempt.csv", "household_key", "negative"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "file", "column", "extra"),
    [case[1:] for case in PLAN_CORPUS],
    ids=[case[0] for case in PLAN_CORPUS],
)
@pytest.mark.parametrize("command", ["validate", "prefilter"])
def test_malformed_plan_file_exits_2(
    tmp_path: Path, command: str, mutate: Callable, file: str, column: str, extra: str
) -> None:
    frames = {**classic_frames(), **classic_plans()}
    mutate(frames)
    folder = write_dir(tmp_path / "dh", frames)
    result = runner.invoke(app, ["data", command, "--source", "dunnhumby", "--path", str(folder)])
    assert_clean_error(result, file, column, extra)


def summary_rows(output: str) -> dict[str, str]:
    """The validate summary table as label -> value."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


class TestValidatePlans:
    def test_summary_and_json_list_the_plan_tables(self, tmp_path: Path) -> None:
        folder = write_dir(tmp_path / "dh", {**classic_frames(), **classic_plans()})
        out = tmp_path / "report.json"
        args = ["data", "validate", "--source", "dunnhumby", "--path", str(folder)]
        result = runner.invoke(app, [*args, "--json", str(out)])
        assert result.exit_code == 0, result.output
        rows = summary_rows(result.output)
        assert rows["promotions rows"] == "6 (weeks 1..20)"
        assert rows["campaigns rows"] == "3"
        assert rows["campaign periods rows"] == "2 (days -6..75)"
        assert rows["coupons rows"] == "3"
        assert rows["coupon redemptions rows"] == "2 (days 9..31)"
        assert json.loads(out.read_text())["plans"]["campaign_periods"] == {
            "rows": 2,
            "days": [-6, 75],
        }

    def test_absent_plan_files_show_a_dash(self, tmp_path: Path) -> None:
        plans = classic_plans()
        del plans["causal_data.csv"], plans["coupon_redempt.csv"]
        folder = write_dir(tmp_path / "dh", {**classic_frames(), **plans})
        args = ["data", "validate", "--source", "dunnhumby", "--path", str(folder)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        rows = summary_rows(result.output)
        assert rows["promotions rows"] == "-"
        assert rows["coupon redemptions rows"] == "-"
        assert rows["coupons rows"] == "3"

    def test_synth_folder_validates_with_its_plans(self, tmp_path: Path) -> None:
        out = tmp_path / "synth"
        result = runner.invoke(app, ["data", "synth", "--users", "80", "--out", str(out)])
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        report = tmp_path / "report.json"
        args = ["data", "validate", "--source", "synthetic", "--path", str(out)]
        result = runner.invoke(app, [*args, "--json", str(report)])
        assert result.exit_code == 0, result.output
        found = json.loads(report.read_text())["plans"]
        assert {table: summary["rows"] for table, summary in found.items()} == manifest["plans"]
        assert found["promotions"]["weeks"] == [1, 53]
        assert summary_rows(result.output)["promotions rows"].endswith("(weeks 1..53)")
