"""A source's name for people never holds a machine path (issue #29, item 8).

The name is published in each version's meta hash (``data_source``), shown on the console
page and printed by ``recsys evaluate`` / ``recsys data validate``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from recsys_batch.config import DataConfig
from recsys_batch.data import columns as C
from recsys_batch.data import sources, synthetic

TX = pl.DataFrame(
    {C.USER: [1], C.BASKET: [10], C.DAY: [1], C.ITEM: [5], C.QTY: [1], C.SALES: [2.5], C.WEEK: [1]}
)


def test_bundled_data_is_named_without_its_install_folder() -> None:
    """Catches the name built from the package's data folder (``completejourney:/home/...``)."""
    name = sources.load_dataset(DataConfig()).name
    assert name == "completejourney (bundled)"
    assert str(sources.completejourney_dir()) not in name


def _dunnhumby(folder: Path) -> DataConfig:
    folder.mkdir()
    TX.rename({C.USER: "household_key", C.WEEK: "WEEK_NO"}).write_csv(
        folder / "transaction_data.csv"
    )
    return DataConfig(source="dunnhumby", path=folder)


def _files(folder: Path) -> DataConfig:
    folder.mkdir()
    TX.write_parquet(folder / "lines.parquet")
    return DataConfig(source="files", transactions_file=folder / "lines.parquet")


def _synthetic(folder: Path) -> DataConfig:
    synthetic.write_synthetic(folder, users=20, seed=1)
    return DataConfig(source="synthetic", path=folder)


@pytest.mark.parametrize(
    ("configure", "expected"),
    [
        (_dunnhumby, "dunnhumby csv (exports-2024)"),
        (_files, "files (lines.parquet)"),
        (_synthetic, "synthetic (exports-2024)"),
    ],
    ids=["dunnhumby", "files", "synthetic"],
)
def test_a_folder_source_is_named_by_its_kind_and_last_part(
    tmp_path: Path, configure: Callable[[Path], DataConfig], expected: str
) -> None:
    """Catches ``f"{kind}:{folder}"``: the name would hold ``tmp_path``."""
    cfg = configure(tmp_path / "exports-2024")
    name = sources.load_dataset(cfg).name
    assert name == expected
    assert str(tmp_path) not in name


def test_generated_data_is_named_by_its_size_and_seed() -> None:
    name = sources.load_dataset(DataConfig(source="synthetic", synthetic_users=30)).name
    assert name == "synthetic (users=30, seed=42)"
