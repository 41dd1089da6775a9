"""Ranking by expected revenue and revenue-weighted training (issue #26), on literal frames."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import FeaturesConfig, RankerConfig
from recsys_batch.data import columns as C
from recsys_batch.model.features import build_features
from recsys_batch.model.ranking import (
    SPEND_COLUMNS,
    TARGET_SPEND,
    expected_spend,
    fit_ranker,
    ranking_scores,
    revenue_blended,
    score,
    target_spend,
    top_k,
    training_weight,
)

FLOOR = 0.1


ROW = ("ui_spend", "ui_baskets", "i_price", "i_quantity", "i_baskets", "ui_rate")


def spend_columns(rows: list[tuple[float | None, ...]]) -> pl.DataFrame:
    """``SPEND_COLUMNS`` rows: (ui_spend, ui_baskets, i_price, i_quantity, i_baskets[,
    ui_rate]); ``ui_rate`` is null when left out."""
    assert set(ROW) == set(SPEND_COLUMNS)
    return pl.DataFrame(
        {name: [row[i] if i < len(row) else None for row in rows] for i, name in enumerate(ROW)},
        schema=dict.fromkeys(ROW, pl.Float32),
    )


class TestExpectedSpend:
    @pytest.mark.parametrize(
        ("row", "expected"),
        [
            ((6.0, 3.0, 9.0, 10.0, 10.0), 2.0),  # own: 6 $ over 3 baskets
            ((0.0, 0.0, 1.5, 40.0, 20.0), 3.0),  # never bought: 1.5 $ x 2 per basket
            ((None, None, 1.5, 40.0, 20.0), 3.0),  # no user x item row at all
            ((0.01, 1.0, 9.0, 1.0, 1.0), FLOOR),  # below the floor
            ((None, None, None, None, None), FLOOR),  # nothing known
            ((0.0, 0.0, 2.0, 0.0, 0.0), FLOOR),  # 0 / 0 is NaN: unknown
        ],
    )
    def test_by_hand(self, row: tuple[float | None, ...], expected: float) -> None:
        """Catches: the fallback used for a bought item, a missing floor, NaN passed on."""
        got = spend_columns([row]).select(expected_spend(FLOOR))
        assert got.item() == pytest.approx(expected)


class TestBlend:
    # User 1: item 11 likely but cheap, item 12 less likely but dear; user 2 as a control.
    SCORED = pl.DataFrame(
        {
            C.USER: [1, 1, 1, 2, 2],
            C.ITEM: [11, 12, 13, 21, 22],
            C.SCORE: pl.Series([1.0, 0.5, 0.0, 2.0, 1.0], dtype=pl.Float32),
        }
    )
    SPEND = spend_columns(
        [
            (2.0, 2.0, 0, 0, 0),  # 1 $
            (12.0, 2.0, 0, 0, 0),  # 6 $
            (None, None, 4.0, 1.0, 1.0),  # 4 $
            (3.0, 1.0, 0, 0, 0),  # 3 $
            (3.0, 1.0, 0, 0, 0),  # 3 $
        ]
    )

    def test_score_plus_exponent_times_log_spend(self) -> None:
        """Catches: a product instead of the log blend, the exponent not applied."""
        got = revenue_blended(self.SCORED, self.SPEND, 0.5, FLOOR)
        spend = [1.0, 6.0, 4.0, 3.0, 3.0]
        expected = [s + 0.5 * math.log(v) for s, v in zip(self.SCORED[C.SCORE], spend, strict=True)]
        assert got[C.SCORE].to_list() == pytest.approx(expected, rel=1e-6)

    @pytest.mark.parametrize(
        ("exponent", "order"),
        [
            (0.0, [11, 12, 13]),  # 1.0 > 0.5 > 0.0: the ranker alone
            (0.5, [12, 11, 13]),  # 1.396 > 1.0 > 0.693
            (1.0, [12, 13, 11]),  # 2.292 > 1.386 > 1.0: expected revenue
        ],
    )
    def test_reorders_as_computed(self, exponent: float, order: list[int]) -> None:
        """Catches: a blend that does not reach the ranking, or a sign flip."""
        ranked = top_k(revenue_blended(self.SCORED, self.SPEND, exponent, FLOOR).lazy(), 3)
        got = ranked.collect()
        assert got.filter(pl.col(C.USER) == 1)[C.ITEM].to_list() == order
        # Equal spend: user 2's order never changes.
        assert got.filter(pl.col(C.USER) == 2)[C.ITEM].to_list() == [21, 22]

    def test_zero_exponent_is_the_ranker(self) -> None:
        assert_frame_equal(revenue_blended(self.SCORED, self.SPEND, 0.0, FLOOR), self.SCORED)


def ranker_frame(seed: int = 0, n_users: int = 40, n_items: int = 10) -> pl.DataFrame:
    """Learnable candidates (bought when ``signal`` is high) with the spend columns."""
    rng = np.random.default_rng(seed)
    n = n_users * n_items
    signal = rng.random(n)
    return pl.DataFrame(
        {
            C.USER: np.repeat(np.arange(n_users), n_items).astype(np.int64),
            C.ITEM: np.tile(np.arange(100, 100 + n_items), n_users).astype(np.int64),
            "signal": signal,
            "ui_spend": rng.random(n) * 10,
            "ui_baskets": rng.integers(0, 3, n).astype(np.float32),
            "i_price": rng.random(n) * 5,
            "i_quantity": np.full(n, 2.0),
            "i_baskets": np.ones(n),
            C.TARGET: (signal > 0.7).astype(np.int8),
            TARGET_SPEND: rng.random(n) * 10,
        }
    )


CFG = RankerConfig(n_estimators=20, num_leaves=7, min_child_samples=5, threads=1, seed=7)


class TestRankingScores:
    def test_the_ranker_score_blended_with_the_features_spend(self) -> None:
        """The function both the backtest and the nightly shard rank with."""
        frame = ranker_frame()
        ranker = fit_ranker(frame.lazy(), ("signal",), (), CFG)
        cfg = CFG.model_copy(update={"revenue_exponent": 0.7})
        got = ranking_scores(ranker, frame, cfg)
        plain = score(ranker, frame.lazy())
        spend = frame.select(expected_spend(cfg.min_expected_spend).alias("s"))["s"].to_numpy()
        np.testing.assert_allclose(
            got[C.SCORE].to_numpy(), plain[C.SCORE].to_numpy() + 0.7 * np.log(spend), rtol=1e-5
        )


class TestTrainingWeight:
    def test_by_hand(self) -> None:
        """Catches: negatives weighted by spend, no median normalisation, the floor ignored."""
        frame = pl.DataFrame(
            {
                C.TARGET: [1, 1, 1, 0, 0],
                TARGET_SPEND: [2.0, 8.0, 0.0, 50.0, None],
            }
        )
        cfg = RankerConfig(revenue_weight=0.5, min_expected_spend=0.5)
        weights = training_weight(frame, cfg)
        assert weights is not None
        # Positive spends 2, 8, 0.5 (floored): median 2.
        np.testing.assert_allclose(weights, [1.0, 2.0, 0.5, 1.0, 1.0])

    def test_none_without_weight_or_spend(self) -> None:
        frame = pl.DataFrame({C.TARGET: [1, 0], TARGET_SPEND: [2.0, 0.0]})
        assert training_weight(frame, RankerConfig(revenue_weight=0.0)) is None
        assert training_weight(frame.drop(TARGET_SPEND), RankerConfig(revenue_weight=1.0)) is None

    def test_weight_changes_the_model(self) -> None:
        """Catches: the weight computed but never handed to LightGBM."""
        frame = ranker_frame()
        plain = score(fit_ranker(frame.lazy(), ("signal",), (), CFG), frame.lazy())
        weighted_cfg = CFG.model_copy(update={"revenue_weight": 1.0})
        weighted = score(fit_ranker(frame.lazy(), ("signal",), (), weighted_cfg), frame.lazy())
        assert not np.allclose(plain[C.SCORE].to_numpy(), weighted[C.SCORE].to_numpy())

    def test_target_spend_sums_the_window(self) -> None:
        window = pl.LazyFrame({C.USER: [1, 1, 2], C.ITEM: [5, 5, 5], C.SALES: [1.5, 2.0, 4.0]})
        got = target_spend(window).collect().sort(C.USER)
        assert got[TARGET_SPEND].to_list() == [3.5, 4.0]


# Point in time: the spend of the blend comes from features as of the cut.
CUT = 5


def lines(rows: list[tuple[int, int, int, int, int, float]]) -> pl.LazyFrame:
    """(user, basket, day, item, week, sales) purchase lines of quantity 1."""
    n = len(rows)
    return pl.LazyFrame(
        {
            C.USER: [r[0] for r in rows],
            C.BASKET: [r[1] for r in rows],
            C.DAY: [r[2] for r in rows],
            C.ITEM: [r[3] for r in rows],
            C.QTY: [1] * n,
            C.SALES: [r[5] for r in rows],
            C.STORE: [1] * n,
            C.RETAIL_DISC: [0.0] * n,
            C.TRANS_TIME: [1200] * n,
            C.WEEK: [r[4] for r in rows],
            C.COUPON_DISC: [0.0] * n,
            C.COUPON_MATCH_DISC: [0.0] * n,
        },
        schema=C.TRANSACTIONS,
    )


# User 10 bought 101 twice (2 $ and 4 $); user 20 bought 102 once (3 $) and never 101.
BEFORE = [
    (10, 1, 1, 101, 1, 2.0),
    (10, 2, 8, 101, 2, 4.0),
    (20, 3, 9, 102, 2, 3.0),
    (20, 4, 10, 101, 2, 1.0),
]
# Target-window poison: huge spends on every candidate pair.
POISON = [(10, 9, 40, 101, 6, 500.0), (10, 9, 40, 102, 6, 900.0), (20, 10, 41, 101, 7, 700.0)]


def featured_spend(rows: list[tuple[int, int, int, int, int, float]]) -> list[float]:
    keys = pl.DataFrame(
        {C.USER: [10, 10, 20], C.ITEM: [101, 102, 102]},
        schema={C.USER: pl.Int64, C.ITEM: pl.Int64},
    ).with_columns(
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in C.CANDIDATES.items()
        if name not in (C.USER, C.ITEM)
    )
    feats = build_features(keys, lines(rows), None, None, CUT, FeaturesConfig())
    frame = feats.frame.collect().sort(C.USER, C.ITEM)
    return frame.select(expected_spend(FLOOR).alias("s"))["s"].to_list()


class TestPointInTime:
    def test_values_by_hand(self) -> None:
        # 10 x 101: own 6 $ / 2 baskets; 10 x 102: never bought, 102's median price 3 $ x 1;
        # 20 x 102: own 3 $ / 1 basket.
        assert featured_spend(BEFORE) == pytest.approx([3.0, 3.0, 3.0])

    def test_target_window_poison_changes_nothing(self) -> None:
        """Catches: a spend read from the weeks on or after the cut."""
        assert featured_spend(BEFORE + POISON) == featured_spend(BEFORE)

    def test_a_purchase_before_the_cut_does_change_it(self) -> None:
        # The guard above can fail: the same 500 $ line one week before the cut shows up.
        assert featured_spend([*BEFORE, (10, 9, 30, 101, 4, 500.0)]) != featured_spend(BEFORE)
