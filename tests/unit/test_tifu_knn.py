"""TIFU-KNN against a tiny case computed by hand (#16)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_batch.config import TifuKnnConfig
from recsys_batch.data import columns as C
from recsys_batch.evaluation.tifu_knn import tifu_knn_baseline, user_vectors

A, B, CC, D = 1, 2, 3, 4
CFG = TifuKnnConfig(groups=2, within_decay=0.5, group_decay=0.5, neighbours=1, alpha=0.5)

# user 10: baskets {A} (day 1), {B} (day 2), {A, C} (day 3); user 20: {C, D}; user 30: {A}.
TX = pl.LazyFrame(
    {
        C.USER: [10, 10, 10, 10, 20, 20, 30],
        C.BASKET: [1, 2, 3, 3, 4, 4, 5],
        C.DAY: [1, 2, 3, 3, 1, 1, 2],
        C.ITEM: [A, B, A, CC, CC, D, A],
    },
    schema={C.USER: pl.Int64, C.BASKET: pl.Int64, C.DAY: pl.Int32, C.ITEM: pl.Int64},
)
# User 10: 3 baskets in 2 groups: floor(p * 2 / 3) = 0, 0, 1.
#   group 0 (m = 2): A * 0.5 ** 1 / 2 = 0.25, B * 0.5 ** 0 / 2 = 0.5; group 1: A = C = 1.
#   u = (0.5 ** 1 * g0 + 0.5 ** 0 * g1) / 2 = A 0.5625, B 0.125, C 0.5.
U10 = [0.5625, 0.125, 0.5, 0.0]
U20 = [0.0, 0.0, 1.0, 1.0]
U30 = [1.0, 0.0, 0.0, 0.0]


def test_user_vectors_by_hand() -> None:
    users, items, vectors = user_vectors(TX, CFG)
    assert users.tolist() == [10, 20, 30]
    assert items.tolist() == [A, B, CC, D]
    np.testing.assert_allclose(vectors.toarray(), [U10, U20, U30])


def test_recommendations_by_hand() -> None:
    # Squared distances: 10-30 0.457 < 10-20 1.582 < 20-30 3, so the nearest neighbour of
    # 10 is 30 and that of 20 and 30 is 10.
    #   10: 0.5 * U10 + 0.5 * U30 = A 0.78125, C 0.25, B 0.0625 (D 0 is not recommended)
    #   20: 0.5 * U20 + 0.5 * U10 = C 0.75, D 0.5, A 0.28125, B 0.0625
    catalogue = pl.LazyFrame({C.ITEM: [A, B, CC, D, 999999]})
    users = pl.LazyFrame({C.USER: [10, 20, 77]}, schema={C.USER: pl.Int64})
    out = tifu_knn_baseline(TX, catalogue, users, CFG, 5, 999999).collect()
    out = out.sort(C.USER, C.RANK)
    assert out[C.USER].unique().to_list() == [10, 20]  # 77 has no history: no list
    assert out[C.ITEM].to_list() == [A, CC, B, CC, D, A, B]
    assert out[C.SCORE].to_list() == pytest.approx(
        [0.78125, 0.25, 0.0625, 0.75, 0.5, 0.28125, 0.0625]
    )


def test_alpha_one_is_the_user_vector_alone() -> None:
    cfg = CFG.model_copy(update={"alpha": 1.0})
    users = pl.LazyFrame({C.USER: [10]}, schema={C.USER: pl.Int64})
    catalogue = pl.LazyFrame({C.ITEM: [A, B, CC, D]})
    out = tifu_knn_baseline(TX, catalogue, users, cfg, 2, 999999).collect()
    assert out[C.ITEM].to_list() == [A, CC]
    assert out[C.RANK].to_list() == [1, 2]
