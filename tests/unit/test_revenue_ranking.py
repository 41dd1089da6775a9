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
    TARGET_SPEND,
    fit_ranker,
    log_expected_spend,
    own_spend,
    ranking_scores,
    revenue_blended,
    score,
    target_spend,
    top_k,
    training_weight,
)

FLOOR = 0.1


class TestExpectedSpend:
    @pytest.mark.parametrize(
        ("spend", "baskets", "expected"),
        [
            (6.0, 3, 2.0),  # 6 $ over 3 baskets
            (0.05, 1, FLOOR),  # below the floor
            (0.0, 0, None),  # never bought
            (None, None, None),  # no user x item row at all
        ],
    )
    def test_own_spend_by_hand(
        self, spend: float | None, baskets: int | None, expected: float | None
    ) -> None:
        """Catches: a sum instead of a mean, a missing floor, a value for a new item."""
        frame = pl.DataFrame(
            {"ui_spend": [spend], "ui_baskets": [baskets]},
            schema={"ui_spend": pl.Float32, "ui_baskets": pl.Float32},
        )
        got = frame.select(own_spend(FLOOR)).item()
        assert got == (None if expected is None else pytest.approx(expected))

    def test_new_items_get_the_users_median(self) -> None:
        """Catches: new items given another user's median, or ln $1 beside bought items."""
        frame = pl.DataFrame(
            {
                C.USER: [1, 1, 1, 1, 2, 2],
                "ui_spend": [2.0, 8.0, 32.0, 0.0, 0.0, None],
                "ui_baskets": [1.0, 1.0, 1.0, 0.0, 0.0, None],
            }
        )
        got = frame.select(log_expected_spend(FLOOR)).to_series().to_list()
        # User 1: ln 2, ln 8, ln 32 and its new item the median ln 8; user 2 bought none: 0.
        expected = [math.log(2), math.log(8), math.log(32), math.log(8), 0.0, 0.0]
        assert got == pytest.approx(expected)


class TestBlend:
    # User 1: item 11 likely but cheap, item 12 less likely but dear, 13 never bought
    # (gets user 1's median, ln 4); user 2 as a control with equal spends.
    SCORED = pl.DataFrame(
        {
            C.USER: [1, 1, 1, 1, 2, 2],
            C.ITEM: [11, 12, 13, 14, 21, 22],
            C.SCORE: pl.Series([1.0, 0.5, 0.0, 0.9, 2.0, 1.0], dtype=pl.Float32),
        }
    )
    SPEND = pl.DataFrame(
        {
            C.USER: [1, 1, 1, 1, 2, 2],
            "ui_spend": [1.0, 12.0, 0.0, 8.0, 3.0, 3.0],
            "ui_baskets": [1.0, 2.0, 0.0, 2.0, 1.0, 1.0],
        }
    )
    LOG_SPEND = (0.0, math.log(6), math.log(4), math.log(4), math.log(3), math.log(3))

    def test_score_plus_exponent_times_log_spend(self) -> None:
        """Catches: a product instead of the log blend, the exponent not applied."""
        got = revenue_blended(self.SCORED, self.SPEND, 0.5, FLOOR)
        expected = [s + 0.5 * v for s, v in zip(self.SCORED[C.SCORE], self.LOG_SPEND, strict=True)]
        assert got[C.SCORE].to_list() == pytest.approx(expected, rel=1e-6)

    @pytest.mark.parametrize(
        ("exponent", "order"),
        [
            (0.0, [11, 14, 12, 13]),  # 1.0 > 0.9 > 0.5 > 0.0: the ranker alone
            (0.2, [14, 11, 12, 13]),  # 1.177 > 1.0 > 0.858 > 0.277
            (0.5, [14, 12, 11, 13]),  # 1.593 > 1.396 > 1.0 > 0.693
            (1.0, [12, 14, 13, 11]),  # 2.292 > 2.286 > 1.386 > 1.0: expected revenue
        ],
    )
    def test_reorders_as_computed(self, exponent: float, order: list[int]) -> None:
        """Catches: a blend that does not reach the ranking, or a sign flip."""
        ranked = top_k(revenue_blended(self.SCORED, self.SPEND, exponent, FLOOR).lazy(), 4)
        got = ranked.collect()
        assert got.filter(pl.col(C.USER) == 1)[C.ITEM].to_list() == order
        # Equal spend: user 2's order never changes.
        assert got.filter(pl.col(C.USER) == 2)[C.ITEM].to_list() == [21, 22]

    def test_a_user_alone_gets_the_same_scores(self) -> None:
        """Shard invariance. Catches: a median over the frame instead of over the user."""
        both = revenue_blended(self.SCORED, self.SPEND, 0.5, FLOOR)
        for user in (1, 2):
            mine = pl.col(C.USER) == user
            alone = revenue_blended(self.SCORED.filter(mine), self.SPEND.filter(mine), 0.5, FLOOR)
            assert_frame_equal(alone, both.filter(mine))

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
            "ui_spend": 1.0 + rng.random(n) * 10,
            "ui_baskets": rng.integers(1, 3, n).astype(np.float32),
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
        own = frame["ui_spend"].to_numpy() / frame["ui_baskets"].to_numpy()
        assert (frame["ui_baskets"] > 0).all()  # every candidate bought: no median needed
        np.testing.assert_allclose(
            got[C.SCORE].to_numpy(), plain[C.SCORE].to_numpy() + 0.7 * np.log(own), rtol=1e-5
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
    return frame.select(log_expected_spend(FLOOR).alias("s"))["s"].to_list()


class TestPointInTime:
    def test_values_by_hand(self) -> None:
        # 10 x 101: own 6 $ / 2 baskets; 10 x 102: never bought, user 10's median (ln 3);
        # 20 x 102: own 3 $ / 1 basket.
        assert featured_spend(BEFORE) == pytest.approx([math.log(3.0)] * 3)

    def test_target_window_poison_changes_nothing(self) -> None:
        """Catches: a spend read from the weeks on or after the cut."""
        assert featured_spend(BEFORE + POISON) == featured_spend(BEFORE)

    def test_a_purchase_before_the_cut_does_change_it(self) -> None:
        # The guard above can fail: the same 500 $ line one week before the cut shows up.
        assert featured_spend([*BEFORE, (10, 9, 30, 101, 4, 500.0)]) != featured_spend(BEFORE)
