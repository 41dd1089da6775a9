"""Ranking metrics against hand-computed cases (issue #4)."""

from __future__ import annotations

import math

import polars as pl
import pytest

from recsys_batch.evaluation.metrics import evaluate, per_user_metrics, precision_curve


def recs(rows: list[tuple[int, int, int]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "rank": pl.Int32}, orient="row"
    )


def pairs(rows: list[tuple[int, int]]) -> pl.LazyFrame:
    return pl.LazyFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64}, orient="row")


def users(ids: list[int]) -> pl.LazyFrame:
    return pl.LazyFrame({"user_id": ids}, schema={"user_id": pl.Int64})


class TestPerUser:
    def test_single_hit_at_rank_two(self) -> None:
        # user 1: recs 10, 11, 12; bought 11 and 13 -> one hit at rank 2, two relevant.
        out = per_user_metrics(
            recs([(1, 10, 1), (1, 11, 2), (1, 12, 3)]), pairs([(1, 11), (1, 13)]), users([1]), 3
        ).collect()
        row = out.row(0, named=True)
        assert row["precision@3"] == pytest.approx(1 / 3)
        assert row["recall@3"] == pytest.approx(1 / 2)
        assert row["map@3"] == pytest.approx((1 / 2) / 2)  # P@2 at the hit / min(2, 3)
        dcg = 1 / math.log2(3)
        idcg = 1 + 1 / math.log2(3)
        assert row["ndcg@3"] == pytest.approx(dcg / idcg)

    @pytest.mark.parametrize(
        ("bought", "expected"),
        [
            # all five hit: perfect scores
            (
                [10, 11, 12, 13, 14],
                {"precision@5": 1.0, "recall@5": 1.0, "map@5": 1.0, "ndcg@5": 1.0},
            ),
            # hits at ranks 1 and 3, one extra relevant item never recommended
            (
                [10, 12, 99],
                {
                    "precision@5": 2 / 5,
                    "recall@5": 2 / 3,
                    "map@5": (1 / 1 + 2 / 3) / 3,
                    "ndcg@5": (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3) + 1 / math.log2(4)),
                },
            ),
            # nothing relevant at all: zero, not NaN
            ([], {"precision@5": 0.0, "recall@5": 0.0, "map@5": 0.0, "ndcg@5": 0.0}),
        ],
    )
    def test_hand_computed(self, bought: list[int], expected: dict[str, float]) -> None:
        top5 = recs([(7, 10 + i, i + 1) for i in range(5)])
        out = per_user_metrics(top5, pairs([(7, b) for b in bought]), users([7]), 5).collect()
        row = out.row(0, named=True)
        for name, value in expected.items():
            assert row[name] == pytest.approx(value), name

    def test_ranks_beyond_k_are_ignored(self) -> None:
        out = per_user_metrics(
            recs([(1, 10, 1), (1, 11, 6)]), pairs([(1, 11)]), users([1]), 5
        ).collect()
        assert out["precision@5"].item() == 0.0

    def test_user_without_recommendations_scores_zero(self) -> None:
        out = per_user_metrics(recs([(1, 10, 1)]), pairs([(2, 10)]), users([1, 2]), 5).collect()
        assert out.sort("user_id")["precision@5"].to_list() == [0.0, 0.0]

    def test_duplicate_truth_rows_count_once(self) -> None:
        out = per_user_metrics(
            recs([(1, 10, 1)]), pairs([(1, 10), (1, 10), (1, 11)]), users([1]), 1
        ).collect()
        assert out["recall@1"].item() == pytest.approx(1 / 2)


class TestEvaluate:
    def test_mean_over_the_user_set_and_coverage(self) -> None:
        r = recs([(1, 10, 1), (1, 11, 2), (2, 10, 1), (2, 12, 2), (3, 13, 1)])
        truth = pairs([(1, 10), (2, 12), (2, 10)])
        out = evaluate(r, truth, users([1, 2]), k=2, catalogue_size=8)
        assert out["users"] == 2
        assert out["precision@2"] == pytest.approx((1 / 2 + 2 / 2) / 2)
        # user 3 is outside the set: item 13 does not count for coverage.
        assert out["coverage"] == pytest.approx(3 / 8)

    def test_precision_curve(self) -> None:
        r = recs([(1, 10, 1), (1, 11, 2), (2, 20, 1), (2, 21, 2)])
        truth = pairs([(1, 11), (2, 20), (2, 21)])
        curve = precision_curve(r, truth, users([1, 2]), max_k=3)
        assert curve == pytest.approx([1 / 2, 3 / 4, 3 / 6])
