"""Id maps and the user x item matrix."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_batch.data import columns as C
from recsys_batch.model.ids import id_map, interaction_weights, to_csr, user_item_matrix, weighted

TX = pl.DataFrame(
    {
        C.USER: [20, 20, 20, 10, 10, 30],
        C.BASKET: [1, 1, 2, 3, 3, 4],
        C.DAY: [1, 1, 11, 11, 11, 6],
        C.ITEM: [101, 101, 101, 102, 999999, 103],
        C.QTY: [2, 1, 0, 5, 1, 3],
    },
    schema_overrides={C.DAY: pl.Int32},
)


def test_id_map_roundtrip_and_unknown() -> None:
    m = id_map(pl.Series([30, 10, 20, 10]), C.USER, C.USER_IDX)
    assert m.ids.tolist() == [10, 20, 30]
    assert m.to_idx(np.array([20, 99, 10])).tolist() == [1, -1, 0]
    assert m.to_ids(np.array([2, 0])).tolist() == [30, 10]
    assert m.frame().rows() == [(10, 0), (20, 1), (30, 2)]


def test_empty_id_map() -> None:
    m = id_map(pl.Series([], dtype=pl.Int64), C.ITEM, C.ITEM_IDX)
    assert len(m) == 0
    assert m.to_idx(np.array([1])).tolist() == [-1]


@pytest.mark.parametrize(
    ("interaction", "expected_20_101"),
    [
        ("count", 2.0),  # two distinct baskets
        ("quantity", 4.0),  # 2 + 1 + max(0, 1)
        ("recency", 0.5 + 1.0),  # day 1 is one half-life (10 days) before day 11
    ],
)
def test_interaction_weights(interaction: str, expected_20_101: float) -> None:
    w = interaction_weights(TX.lazy(), interaction, half_life_days=10.0, as_of_day=11).collect()  # type: ignore[arg-type]
    got = w.filter(pl.col(C.USER) == 20, pl.col(C.ITEM) == 101)["weight"].item()
    assert got == pytest.approx(expected_20_101)
    assert w.height == 4


def test_csr_shape_order_and_values() -> None:
    users = id_map(TX[C.USER], C.USER, C.USER_IDX)
    items = id_map(TX[C.ITEM], C.ITEM, C.ITEM_IDX)
    m = user_item_matrix(TX.lazy(), users, items, "count", "none")
    assert m.shape == (3, 4)
    assert m.dtype == np.float32
    dense = m.toarray()
    assert dense[users.to_idx(np.array([20]))[0], items.to_idx(np.array([101]))[0]] == 2.0
    assert dense[users.to_idx(np.array([10]))[0], items.to_idx(np.array([999999]))[0]] == 1.0
    assert m.nnz == 4


def test_csr_drops_unknown_ids() -> None:
    users = id_map(pl.Series([10, 20]), C.USER, C.USER_IDX)
    items = id_map(pl.Series([101]), C.ITEM, C.ITEM_IDX)
    w = interaction_weights(TX.lazy(), "count").collect()
    m = to_csr(w, users, items)
    assert m.shape == (2, 1)
    assert m.nnz == 1


@pytest.mark.parametrize("weighting", ["bm25", "tfidf"])
def test_weighting_keeps_pattern(weighting: str) -> None:
    users = id_map(TX[C.USER], C.USER, C.USER_IDX)
    items = id_map(TX[C.ITEM], C.ITEM, C.ITEM_IDX)
    raw = user_item_matrix(TX.lazy(), users, items, "count", "none")
    w = weighted(raw, weighting)  # type: ignore[arg-type]
    assert w.shape == raw.shape
    assert w.dtype == np.float32
    assert (w.toarray() != 0).tolist() == (raw.toarray() != 0).tolist()
    assert not np.allclose(w.toarray(), raw.toarray())
