"""Readers: every source gives the canonical schemas, whatever the file layout."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import DataConfig
from recsys_batch.data import columns as C
from recsys_batch.data import sources
from recsys_batch.errors import DataError

UPPER_CSV = """household_key,BASKET_ID,DAY,PRODUCT_ID,QUANTITY,SALES_VALUE,STORE_ID,RETAIL_DISC,TRANS_TIME,WEEK_NO,COUPON_DISC,COUPON_MATCH_DISC
2375,26984851472,1,1004906,1,1.39,364,-0.6,1631,1,0,0
2375,26984851472,1,1033142,0,0.82,364,0,1631,1,0,0
1364,26984896261,2,842930,2,2.19,31742,-0.3,1520,1,-0.55,0
"""  # noqa: E501 - the classic header is one line

LOWER_CSV = """user_id,basket_id,day,item_id,quantity,sales_value,store_id,retail_disc,trans_time,week_no,coupon_disc,coupon_match_disc
2375,26984851472,1,1004906,1,1.39,364,-0.6,1631,1,0,0
2375,26984851472,1,1033142,0,0.82,364,0,1631,1,0,0
1364,26984896261,2,842930,2,2.19,31742,-0.3,1520,1,-0.55,0
"""  # noqa: E501

PRODUCT_CSV = """PRODUCT_ID,MANUFACTURER,DEPARTMENT,BRAND,COMMODITY_DESC,SUB_COMMODITY_DESC,CURR_SIZE_OF_PRODUCT
1004906,69,PRODUCE,Private,POTATOES,POTATOES RUSSET (BULK&BAG),5 LB
1033142,2,GROCERY,National,SOUP,CONDENSED SOUP,
"""  # noqa: E501

HH_CSV = """AGE_DESC,MARITAL_STATUS_CODE,INCOME_DESC,HOMEOWNER_DESC,HH_COMP_DESC,HOUSEHOLD_SIZE_DESC,KID_CATEGORY_DESC,household_key
65+,A,35-49K,Homeowner,2 Adults No Kids,2,None/Unknown,2375
"""  # noqa: E501

EXPECTED_TX = pl.DataFrame(
    {
        C.USER: [2375, 2375, 1364],
        C.BASKET: [26984851472, 26984851472, 26984896261],
        C.DAY: [1, 1, 2],
        C.ITEM: [1004906, 1033142, 842930],
        C.QTY: [1, 0, 2],
        C.SALES: [1.39, 0.82, 2.19],
        C.STORE: [364, 364, 31742],
        C.RETAIL_DISC: [0.6, 0.0, 0.3],  # made positive like the bundled data
        C.TRANS_TIME: [1631, 1631, 1520],
        C.WEEK: [1, 1, 1],
        C.COUPON_DISC: [0.0, 0.0, 0.55],
        C.COUPON_MATCH_DISC: [0.0, 0.0, 0.0],
    },
    schema=C.TRANSACTIONS,
)


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


class TestDunnhumby:
    @pytest.mark.parametrize(
        ("tx_name", "tx_text"),
        [("transaction_data.csv", UPPER_CSV), ("retail_train.csv", LOWER_CSV)],
        ids=["upper-case", "lower-case"],
    )
    def test_layouts_give_the_same_canonical_frames(
        self, tmp_path: Path, tx_name: str, tx_text: str
    ) -> None:
        folder = write(
            tmp_path, {tx_name: tx_text, "product.csv": PRODUCT_CSV, "hh_demographic.csv": HH_CSV}
        )
        dataset = sources.load_dataset(DataConfig(source="dunnhumby", path=folder))
        assert dataset.transactions.collect_schema() == C.TRANSACTIONS
        assert_frame_equal(dataset.transactions.collect(), EXPECTED_TX)
        assert dataset.items is not None
        assert dataset.users is not None
        items = dataset.items.collect()
        assert items.schema == C.ITEMS
        assert items.row(0, named=True) == {
            C.ITEM: 1004906,
            C.MANUFACTURER: 69,
            C.DEPARTMENT: "PRODUCE",
            C.BRAND: "Private",
            C.CATEGORY: "POTATOES",
            C.SUB_CATEGORY: "POTATOES RUSSET (BULK&BAG)",
            C.PACKAGE_SIZE: "5 LB",
        }
        assert items.get_column(C.PACKAGE_SIZE)[1] is None
        users = dataset.users.collect()
        assert users.schema == C.USERS
        assert users.row(0, named=True) == {
            C.USER: 2375,
            C.AGE: "65+",
            C.INCOME: "35-49K",
            C.HOME_OWNERSHIP: "Homeowner",
            C.MARITAL_STATUS: "A",
            C.HOUSEHOLD_SIZE: "2",
            C.HOUSEHOLD_COMP: "2 Adults No Kids",
            C.KIDS_COUNT: "None/Unknown",
        }

    def test_mixed_case_columns_are_matched(self, tmp_path: Path) -> None:
        text = UPPER_CSV.replace("PRODUCT_ID", "product_id").replace("WEEK_NO", "Week_No")
        folder = write(tmp_path, {"transaction_data.csv": text})
        dataset = sources.load_dataset(DataConfig(source="dunnhumby", path=folder))
        assert_frame_equal(dataset.transactions.collect(), EXPECTED_TX)

    def test_integers_written_as_floats_are_read(self, tmp_path: Path) -> None:
        text = UPPER_CSV.replace(",1631,1,", ",1631.0,1.00,").replace("2375,", " 2375.0 ,")
        folder = write(tmp_path, {"transaction_data.csv": text})
        tx = sources.load_dataset(
            DataConfig(source="dunnhumby", path=folder)
        ).transactions.collect()
        assert_frame_equal(tx, EXPECTED_TX)

    def test_item_and_user_files_are_optional(self, tmp_path: Path) -> None:
        folder = write(tmp_path, {"transaction_data.csv": UPPER_CSV})
        dataset = sources.load_dataset(DataConfig(source="dunnhumby", path=folder))
        assert dataset.items is None
        assert dataset.users is None
        assert [t.table for t in dataset.tables] == ["transactions"]

    def test_absent_optional_column_is_null(self, tmp_path: Path) -> None:
        text = "\n".join(",".join(line.split(",")[:10]) for line in UPPER_CSV.splitlines())
        folder = write(tmp_path, {"transaction_data.csv": text + "\n"})
        tx = sources.load_dataset(
            DataConfig(source="dunnhumby", path=folder)
        ).transactions.collect()
        assert tx.schema == C.TRANSACTIONS
        assert tx.get_column(C.COUPON_DISC).null_count() == 3
        assert tx.get_column(C.WEEK).to_list() == [1, 1, 1]

    def test_needs_a_directory(self) -> None:
        with pytest.raises(DataError, match="needs a directory"):
            sources.load_dataset(DataConfig(source="dunnhumby"))


class TestFiles:
    MAPPING = {C.USER: "hh", C.ITEM: "sku", C.WEEK: "wk", C.QTY: "units"}

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "hh": [1, 2],
                C.BASKET: [10, 11],
                C.DAY: [1, 9],
                "sku": [5, 6],
                "units": [1, 3],
                C.SALES: [2.5, 3.0],
                "wk": [1, 2],
                "extra": ["x", "y"],
            }
        )

    @pytest.mark.parametrize("suffix", [".parquet", ".csv"])
    def test_mapping_renames_and_casts(self, tmp_path: Path, suffix: str) -> None:
        path = tmp_path / f"tx{suffix}"
        frame = self.frame()
        frame.write_parquet(path) if suffix == ".parquet" else frame.write_csv(path)
        cfg = DataConfig(source="files", transactions_file=path, column_mapping=self.MAPPING)
        tx = sources.load_dataset(cfg).transactions.collect()
        assert tx.schema == C.TRANSACTIONS
        assert tx.get_column(C.USER).to_list() == [1, 2]
        assert tx.get_column(C.ITEM).to_list() == [5, 6]
        assert tx.get_column(C.QTY).to_list() == [1, 3]
        assert tx.get_column(C.WEEK).to_list() == [1, 2]
        assert tx.get_column(C.STORE).null_count() == 2

    def test_path_may_name_the_transactions_file(self, tmp_path: Path) -> None:
        path = tmp_path / "tx.parquet"
        self.frame().write_parquet(path)
        cfg = DataConfig(source="files", path=path, column_mapping=self.MAPPING)
        assert sources.load_dataset(cfg).transactions.collect().height == 2

    def test_unknown_mapping_key_suggests_the_canonical_name(self, tmp_path: Path) -> None:
        cfg = DataConfig(source="files", path=tmp_path / "x.csv", column_mapping={"usr_id": "hh"})
        with pytest.raises(DataError, match="did you mean 'user_id'"):
            sources.load_dataset(cfg)

    def test_mapping_can_be_scoped_to_one_table(self, tmp_path: Path) -> None:
        tx_path, items_path = tmp_path / "tx.parquet", tmp_path / "items.csv"
        self.frame().write_parquet(tx_path)
        items_path.write_text("product,department\n5,GROCERY\n6,PRODUCE\n")
        mapping = {**self.MAPPING, "items.item_id": "product"}
        cfg = DataConfig(
            source="files", transactions_file=tx_path, items_file=items_path, column_mapping=mapping
        )
        dataset = sources.load_dataset(cfg)
        assert dataset.items is not None
        assert dataset.items.collect().get_column(C.ITEM).to_list() == [5, 6]
        assert dataset.transactions.collect().get_column(C.ITEM).to_list() == [5, 6]

    def test_needs_a_transactions_file(self) -> None:
        with pytest.raises(DataError, match="transactions_file"):
            sources.load_dataset(DataConfig(source="files"))


class TestSynthetic:
    def test_in_memory_generation(self) -> None:
        dataset = sources.load_dataset(DataConfig(source="synthetic", synthetic_users=40))
        assert dataset.transactions.collect_schema() == C.TRANSACTIONS
        assert dataset.items is not None
        assert dataset.users is not None
        assert dataset.transactions.select(pl.col(C.USER).max()).collect().item() == 40

    def test_written_folder_reads_back_identically(self, tmp_path: Path) -> None:
        from recsys_batch.data import synthetic

        synthetic.write_synthetic(tmp_path, users=60, seed=5)
        dataset = sources.load_dataset(DataConfig(source="synthetic", path=tmp_path))
        expected = synthetic.generate(60, 5)
        assert_frame_equal(dataset.transactions.collect(), expected.transactions)
        assert dataset.items is not None
        assert_frame_equal(dataset.items.collect(), expected.items)


def test_completejourney_schemas() -> None:
    dataset = sources.load_dataset(DataConfig())
    assert dataset.transactions.collect_schema() == C.TRANSACTIONS
    assert dataset.items is not None
    assert dataset.items.collect_schema() == C.ITEMS
    assert dataset.users is not None
    assert dataset.users.collect_schema() == C.USERS


def test_canonical_reads_only_the_header_until_collected(tmp_path: Path) -> None:
    (tmp_path / "transaction_data.csv").write_text(UPPER_CSV.replace("1.39", "oops"))
    dataset = sources.load_dataset(DataConfig(source="dunnhumby", path=tmp_path))
    # Building the frame succeeds; collecting it strictly fails (validation reports it first).
    with pytest.raises(pl.exceptions.InvalidOperationError):
        dataset.transactions.collect()
