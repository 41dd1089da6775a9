"""The lazy prefilter equals an independently written eager version; the bundled counts."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import DataConfig, PrefilterConfig
from recsys_batch.data import columns as C
from recsys_batch.data import synthetic
from recsys_batch.data.partitions import scan_part, write_parts
from recsys_batch.data.sources import load_dataset
from recsys_batch.model import prefilter as prefilter_module
from recsys_batch.model.ids import ITEM_PART, item_part
from recsys_batch.model.prefilter import (
    FUNNEL,
    ITEM_STATS_COLUMNS,
    RULES,
    apply_catalogue,
    item_stats,
    item_stats_in_parts,
    prefilter,
)


def eager_prefilter(
    tx: pl.DataFrame, items: pl.DataFrame | None, cfg: PrefilterConfig
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rules of issue #2 on eager frames, written without looking at ``prefilter.py``.

    Returns the catalogue (most sold first, ties by item id) and the funnel.
    """
    n_users = tx.get_column(C.USER).n_unique()
    newest = tx.get_column(C.DAY).max()
    priced = tx.with_columns((pl.col(C.SALES) / pl.col(C.QTY).clip(lower_bound=1)).alias("unit"))
    stats = priced.group_by(C.ITEM).agg(
        pl.col(C.QTY).sum().alias(C.QTY_SOLD),
        pl.col(C.USER).n_unique().alias(C.BUYERS),
        pl.col("unit").median().alias("median"),
        pl.col("unit").min().alias("lowest"),
        pl.col("unit").max().alias("highest"),
        pl.col(C.DAY).max().alias("last_sold"),
    )
    stats = stats.with_columns((pl.col(C.BUYERS) / n_users).alias(C.USER_SHARE))

    kept = {"all": stats}
    kept["recent"] = stats.filter(newest - pl.col("last_sold") < cfg.recent_days)
    kept["popularity"] = kept["recent"].filter(
        (pl.col(C.USER_SHARE) >= cfg.min_user_share) & (pl.col(C.USER_SHARE) <= cfg.max_user_share)
    )
    if items is None:
        kept["department"] = kept["popularity"]
    else:
        sizes = items.group_by(C.DEPARTMENT).agg(pl.col(C.ITEM).n_unique().alias("size"))
        small = sizes.filter(
            pl.col(C.DEPARTMENT).is_not_null() & (pl.col("size") < cfg.min_department_items)
        ).get_column(C.DEPARTMENT)
        in_small = items.unique(C.ITEM, keep="first").filter(pl.col(C.DEPARTMENT).is_in(small))
        kept["department"] = kept["popularity"].filter(
            ~pl.col(C.ITEM).is_in(in_small.get_column(C.ITEM).implode())
        )
    if cfg.price_statistic == "median":
        in_range = pl.col("median").is_between(cfg.min_price, cfg.max_price)
    else:
        in_range = (pl.col("lowest") >= cfg.min_price) & (pl.col("highest") <= cfg.max_price)
    kept["price"] = kept["department"].filter(in_range)
    kept["top_n"] = (
        kept["price"].sort([C.QTY_SOLD, C.ITEM], descending=[True, False]).head(cfg.top_n)
    )

    funnel_rows = []
    for rule in RULES:
        lines = tx.filter(pl.col(C.ITEM).is_in(kept[rule].get_column(C.ITEM).implode()))
        funnel_rows.append(
            (rule, kept[rule].height, lines.get_column(C.USER).n_unique(), lines.height)
        )
    funnel = pl.DataFrame(funnel_rows, schema=FUNNEL, orient="row")
    catalogue = kept["top_n"].select(
        pl.col(C.ITEM),
        pl.col(C.QTY_SOLD).cast(pl.Int64),
        pl.col(C.BUYERS).cast(pl.UInt32),
        pl.col(C.USER_SHARE),
        pl.col("median").alias(C.UNIT_PRICE),
    )
    return catalogue, funnel


CONFIGS = {
    "default": PrefilterConfig(),
    "tight": PrefilterConfig(
        recent_days=60, min_department_items=2_000, top_n=300, price_statistic="any"
    ),
    "loose": PrefilterConfig(min_user_share=0.005, max_user_share=0.5, min_price=0.5, top_n=50_000),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lazy_equals_eager(seed: int, config: PrefilterConfig) -> None:
    data = synthetic.generate(250, seed)
    tx = data.transactions.filter(pl.col(C.WEEK) < 50)
    expected_catalogue, expected_funnel = eager_prefilter(tx, data.items, config)
    result = prefilter(tx.lazy(), data.items.lazy(), config)
    catalogue, funnel = pl.collect_all([result.catalogue, result.funnel])
    assert_frame_equal(funnel, expected_funnel)
    assert_frame_equal(catalogue, expected_catalogue)
    assert catalogue.height > 0


class TestItemStatsInParts:
    """Out of core the item statistics are computed from item part files (issues #17, #28)."""

    @pytest.mark.parametrize("n_parts", [1, 2, 7])
    def test_equal_one_pass(self, n_parts: int, tmp_path: Path) -> None:
        """Mutations caught: parts keyed by anything but the item (an item's lines split
        across parts: two rows for it, each with part of its buyers and prices), a part
        skipped when reading back (``range(n_parts - 1)``: its items missing), a part read
        twice, a stale file in the folder read as a part's, and the user share over one
        part's users instead of everyone's."""
        data = synthetic.generate(300, 4)
        # A customer with one line: some part lacks them, so its own user count is short.
        new_user = pl.lit(10**12, dtype=pl.Int64).alias(C.USER)  # no synthetic user's id
        lone = data.transactions.head(1).with_columns(new_user)
        tx = pl.concat([data.transactions, lone]).lazy()
        by_item = [C.ITEM]
        one_pass = item_stats(tx).collect().sort(by_item)
        folder = tmp_path / "item_parts"
        if n_parts > 1:  # a killed call's file (1 part writes nothing)
            stale = folder / f"{ITEM_PART}=00000" / "part-00099.parquet"
            stale.parent.mkdir(parents=True)
            tx.head(50).select(ITEM_STATS_COLUMNS).collect().write_parquet(stale)
        in_parts = item_stats_in_parts(tx, n_parts, folder=folder).collect().sort(by_item)
        assert_frame_equal(in_parts, one_pass)
        assert not folder.exists()  # removed once read
        # The load stage's user count, passed in (no second pass), gives the same user shares.
        n_users = tx.select(pl.col(C.USER).n_unique()).collect().item()
        given = item_stats_in_parts(tx, n_parts, n_users, folder=folder).collect().sort(by_item)
        assert_frame_equal(given, one_pass)
        config = CONFIGS["default"]
        expected = prefilter(tx, data.items.lazy(), config).catalogue.collect()
        stats = item_stats_in_parts(tx, n_parts, folder=folder)
        assert_frame_equal(
            prefilter(tx, data.items.lazy(), config, stats).catalogue.collect(), expected
        )
        assert expected.height > 0

    def test_parts_hold_whole_items_and_every_line(self, tmp_path: Path) -> None:
        """Every line is in exactly one part, every item in exactly one part, no part empty
        here (so a skipped part would lose items). Mutations caught: ``item_part`` hashing
        the user or the row instead of the item (items split across parts), lines dropped
        or duplicated by the sink, columns other than ``ITEM_STATS_COLUMNS`` written."""
        tx = synthetic.generate(300, 4).transactions
        lines = tx.select(ITEM_STATS_COLUMNS)
        write_parts(lines.lazy(), item_part(7), 7, tmp_path)
        parts = [scan_part(tmp_path, ITEM_PART, p).collect() for p in range(7)]
        assert all(part.columns == list(ITEM_STATS_COLUMNS) for part in parts)
        assert_frame_equal(pl.concat(parts), lines, check_row_order=False)
        items = [set(part.get_column(C.ITEM)) for part in parts]
        assert all(items)
        assert sum(len(part_items) for part_items in items) == tx.get_column(C.ITEM).n_unique()

    def test_folder_removed_when_reading_fails(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The part files go whatever the outcome. Mutation caught: removal outside a
        ``finally`` (a failed night would leave the raw lines' copy on disk)."""
        tx = synthetic.generate(100, 4).transactions.lazy()
        folder = tmp_path / "item_parts"

        def failing(parts: list[pl.LazyFrame], n_users: int) -> pl.LazyFrame:
            assert folder.exists()  # written before reading
            raise RuntimeError("read failed")

        monkeypatch.setattr(prefilter_module, "item_stats_of_parts", failing)
        with pytest.raises(RuntimeError, match="read failed"):
            item_stats_in_parts(tx, 3, folder=folder)
        assert not folder.exists()


def test_lazy_equals_eager_without_item_table() -> None:
    data = synthetic.generate(200, 9)
    expected_catalogue, expected_funnel = eager_prefilter(
        data.transactions, None, CONFIGS["default"]
    )
    result = prefilter(data.transactions.lazy(), None, CONFIGS["default"])
    assert_frame_equal(result.funnel.collect(), expected_funnel)
    assert_frame_equal(result.catalogue.collect(), expected_catalogue)


def test_tight_config_bites_at_every_rule() -> None:
    """Guards the equivalence test: the configs above exercise every rule."""
    data = synthetic.generate(250, 1)
    _, funnel = eager_prefilter(data.transactions, data.items, CONFIGS["tight"])
    items = funnel.get_column("items").to_list()
    assert all(later < earlier for earlier, later in zip(items, items[1:], strict=False))


def test_schemas() -> None:
    data = synthetic.generate(50, 1)
    result = prefilter(data.transactions.lazy(), data.items.lazy(), PrefilterConfig())
    assert result.catalogue.collect_schema() == C.CATALOGUE
    assert result.funnel.collect_schema() == FUNNEL


def test_fewer_items_than_top_n_keeps_what_remains() -> None:
    data = synthetic.generate(100, 3)
    funnel = prefilter(
        data.transactions.lazy(), data.items.lazy(), PrefilterConfig(top_n=1_000_000)
    ).funnel.collect()
    items = dict(funnel.select("rule", "items").iter_rows())
    assert items["top_n"] == items["price"] > 0


def test_apply_catalogue_maps_the_rest_to_the_placeholder() -> None:
    data = synthetic.generate(80, 2)
    cfg = PrefilterConfig(top_n=20)
    tx = data.transactions.lazy()
    catalogue = prefilter(tx, data.items.lazy(), cfg).catalogue
    mapped = apply_catalogue(tx, catalogue, cfg).collect()
    kept = set(catalogue.collect().get_column(C.ITEM).to_list())
    assert mapped.height == data.transactions.height
    assert set(mapped.get_column(C.ITEM).unique().to_list()) == kept | {cfg.placeholder_item}
    # Row order is not part of the contract: compare per-item counts.
    expected = (
        data.transactions.with_columns(
            pl.when(pl.col(C.ITEM).is_in(list(kept)))
            .then(pl.col(C.ITEM))
            .otherwise(cfg.placeholder_item)
            .alias(C.ITEM)
        )
        .group_by(C.ITEM)
        .len()
    )
    assert_frame_equal(mapped.group_by(C.ITEM).len(), expected, check_row_order=False)


@pytest.mark.slow
def test_bundled_counts_issue_2() -> None:
    """Issue #2: on weeks < 50 the default rules leave 3,489 / 3,474 / 2,826 / 2,500 items."""
    dataset = load_dataset(DataConfig())
    tx = dataset.transactions.filter(pl.col(C.WEEK) < 50)
    funnel = prefilter(tx, dataset.items, PrefilterConfig()).funnel.collect()
    items = dict(funnel.select("rule", "items").iter_rows())
    assert (items["popularity"], items["department"], items["price"], items["top_n"]) == (
        3_489,
        3_474,
        2_826,
        2_500,
    )


@pytest.mark.slow
def test_bundled_any_price_statistic_keeps_far_fewer() -> None:
    """The seed code's reading (drop on any out-of-range sale) leaves about 1,500 items."""
    dataset = load_dataset(DataConfig())
    tx = dataset.transactions.filter(pl.col(C.WEEK) < 50)
    cfg = PrefilterConfig(price_statistic="any")
    funnel = prefilter(tx, dataset.items, cfg).funnel.collect()
    price_items = funnel.filter(pl.col("rule") == "price").get_column("items").item()
    assert 1_200 < price_items < 1_800
