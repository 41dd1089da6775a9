"""Id maps, the compact (index-space) lines and the user x item matrix."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.data import columns as C
from recsys_batch.errors import DataError
from recsys_batch.model.ids import (
    compact_lines,
    id_map,
    interaction_weights,
    to_csr,
    user_item_matrix,
    weighted,
)

TX = pl.DataFrame(
    {
        C.USER: [20, 20, 20, 10, 10, 30],
        C.BASKET: [7, 7, 2, 3_000_000_000_000, 3_000_000_000_000, 4],
        C.DAY: [1, 1, 11, 11, 11, 6],
        C.ITEM: [101, 101, 101, 102, 999999, 103],
        C.QTY: [2, 1, 0, 5, 1, 3],
        C.WEEK: [1, 1, 2, 2, 2, 1],
    },
    schema_overrides={C.DAY: pl.Int32, C.WEEK: pl.Int32},
)
PART = 1_000  # lines a part of a group-by: all of TX in one


def test_id_map_roundtrip_and_unknown() -> None:
    m = id_map(pl.Series([30, 10, 20, 10]), C.USER, C.USER_IDX)
    assert m.ids.tolist() == [10, 20, 30]
    assert m.to_idx(np.array([20, 99, 10])).tolist() == [1, -1, 0]
    assert m.to_ids(np.array([2, 0])).tolist() == [30, 10]
    assert m.frame().rows() == [(10, 0), (20, 1), (30, 2)]
    got = pl.DataFrame({"i": pl.Series([2, 0, 2], dtype=pl.UInt32)}).select(m.id_of(pl.col("i")))
    assert got[C.USER].to_list() == [30, 10, 30]
    assert got.schema == pl.Schema({C.USER: pl.Int64})


def test_empty_id_map() -> None:
    m = id_map(pl.Series([], dtype=pl.Int64), C.ITEM, C.ITEM_IDX)
    assert len(m) == 0
    assert m.to_idx(np.array([1])).tolist() == [-1]


class TestCompactLines:
    """Issue #17: the fit lines in index space, in the order ``id_map`` assigns."""

    def test_schema(self) -> None:
        fit = compact_lines(TX.lazy(), part_lines=PART)
        assert fit.lines.schema == C.FIT_LINES
        assert fit.shape == (3, 4)
        assert fit.n_baskets == 4

    def test_indexes_follow_ascending_ids_and_rows_keep_their_order(self) -> None:
        fit = compact_lines(TX.lazy(), part_lines=PART)
        assert fit.users.ids.tolist() == id_map(TX[C.USER], C.USER, C.USER_IDX).ids.tolist()
        assert fit.items.ids.tolist() == [101, 102, 103, 999999]
        assert fit.lines[C.USER_IDX].to_list() == [1, 1, 1, 0, 0, 2]
        assert fit.lines[C.ITEM_IDX].to_list() == [0, 0, 0, 1, 3, 2]
        # dense rank of the basket id (2 < 4 < 7 < 3e12), not the order of appearance
        assert fit.lines[C.BASKET_IDX].to_list() == [2, 2, 0, 3, 3, 1]
        assert fit.lines[C.DAY].to_list() == TX[C.DAY].to_list()
        assert fit.lines[C.WEEK].to_list() == TX[C.WEEK].to_list()

    def test_extra_columns_kept_as_they_are(self) -> None:
        fit = compact_lines(TX.lazy(), extra=[C.QTY], part_lines=PART)
        assert fit.lines[C.QTY].to_list() == TX[C.QTY].to_list()
        assert fit.lines.schema[C.QTY] == pl.Int64

    @pytest.mark.parametrize(("col", "value"), [(C.DAY, 40_000), (C.WEEK, -40_000)])
    def test_day_or_week_outside_int16_is_refused(self, col: str, value: int) -> None:
        out_of_range = pl.when(pl.col(C.USER) == 30).then(value).otherwise(pl.col(col))
        bad = TX.with_columns(out_of_range.cast(pl.Int32).alias(col))
        with pytest.raises(DataError, match=f"{col} runs from .* Int16"):
            compact_lines(bad.lazy(), part_lines=PART)

    def test_no_lines(self) -> None:
        fit = compact_lines(TX.clear().lazy(), part_lines=PART)
        assert fit.lines.is_empty()
        assert fit.lines.schema == C.FIT_LINES
        assert fit.shape == (0, 0)


@pytest.mark.parametrize(
    ("interaction", "expected_20_101"),
    [
        ("count", 2.0),  # two distinct baskets
        ("quantity", 4.0),  # 2 + 1 + max(0, 1)
        ("recency", 0.5 + 1.0),  # day 1 is one half-life (10 days) before day 11
    ],
)
def test_interaction_weights(interaction: str, expected_20_101: float) -> None:
    fit = compact_lines(TX.lazy(), extra=[C.QTY], part_lines=PART)
    lines = fit.lines.lazy()
    w = interaction_weights(lines, interaction, half_life_days=10.0, as_of_day=11).collect()  # type: ignore[arg-type]
    u, i = fit.users.to_idx(np.array([20]))[0], fit.items.to_idx(np.array([101]))[0]
    got = w.filter(pl.col(C.USER_IDX) == u, pl.col(C.ITEM_IDX) == i)["weight"].item()
    assert got == pytest.approx(expected_20_101)
    assert w.height == 4


def test_csr_shape_order_and_values() -> None:
    fit = compact_lines(TX.lazy(), part_lines=PART)
    m = user_item_matrix(fit, "count", "none")
    assert m.shape == (3, 4)
    assert m.dtype == np.float32
    dense = m.toarray()
    assert dense[fit.users.to_idx(np.array([20]))[0], fit.items.to_idx(np.array([101]))[0]] == 2.0
    assert (
        dense[fit.users.to_idx(np.array([10]))[0], fit.items.to_idx(np.array([999999]))[0]] == 1.0
    )
    assert m.nnz == 4


@pytest.mark.parametrize("key", [C.USER_IDX, C.BASKET_IDX])
def test_collect_by_parts_keeps_every_line_once(key: str) -> None:
    fit = compact_lines(TX.lazy(), part_lines=2)
    got = fit.collect_by(key, lambda lines: lines.with_columns(pl.len().over(key).alias("n")))
    assert got.height == TX.height
    # each part holds whole values of the key: the per-key counts are those of every line
    expected = fit.lines.with_columns(pl.len().over(key).alias("n"))
    assert_frame_equal(got, expected, check_row_order=False)


def test_user_item_matrix_in_parts_equals_whole() -> None:
    whole = user_item_matrix(compact_lines(TX.lazy(), part_lines=PART), "recency", as_of_day=None)
    parts = user_item_matrix(compact_lines(TX.lazy(), part_lines=1), "recency", as_of_day=None)
    # None = the newest day of every line (11), not of each part's
    np.testing.assert_array_equal(whole.toarray(), parts.toarray())


def test_csr_from_index_frame() -> None:
    weights = pl.DataFrame(
        {C.USER_IDX: [1, 0], C.ITEM_IDX: [2, 0], "weight": [3.0, 1.0]},
        schema_overrides={C.USER_IDX: pl.UInt32, C.ITEM_IDX: pl.UInt32},
    )
    m = to_csr(weights, (2, 3))
    assert m.toarray().tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    assert m.indices.dtype == np.int32


@pytest.mark.parametrize("weighting", ["bm25", "tfidf"])
def test_weighting_keeps_pattern(weighting: str) -> None:
    fit = compact_lines(TX.lazy(), part_lines=PART)
    raw = user_item_matrix(fit, "count", "none")
    w = weighted(raw, weighting)  # type: ignore[arg-type]
    assert w.shape == raw.shape
    assert w.dtype == np.float32
    assert (w.toarray() != 0).tolist() == (raw.toarray() != 0).tolist()
    assert not np.allclose(w.toarray(), raw.toarray())
