"""Revenue, discovery and the co-purchase anchor of new items (issue #26), on literal data.

Every expected value is counted by hand from the frames in the test; each docstring names
the mistake it catches.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys_batch.data import columns as C
from recsys_batch.evaluation.baselines import copurchase_new_baseline
from recsys_batch.evaluation.bootstrap import paired_rate_difference, rate_difference_interval
from recsys_batch.evaluation.metrics import discovery, slot_outcomes
from recsys_batch.evaluation.protocol import bought_before, spend_in_test_window
from recsys_batch.model import ids
from recsys_batch.model.candidates import Stage1Model
from recsys_batch.model.split import Windows


def recs(rows: list[tuple[int, int, int]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        rows, schema={C.USER: pl.Int64, C.ITEM: pl.Int64, C.RANK: pl.Int32}, orient="row"
    )


def pairs(rows: list[tuple[int, int]]) -> pl.LazyFrame:
    return pl.LazyFrame(rows, schema={C.USER: pl.Int64, C.ITEM: pl.Int64}, orient="row")


def spend(rows: list[tuple[int, int, float]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        rows, schema={C.USER: pl.Int64, C.ITEM: pl.Int64, C.SALES: pl.Float64}, orient="row"
    )


def users(user_ids: list[int]) -> pl.LazyFrame:
    return pl.LazyFrame({C.USER: user_ids}, schema={C.USER: pl.Int64})


# User 1: top 3 = 10, 11, 12 (13 at rank 6 is outside k = 3); bought 10 and 11 before, so 12
# is new although user 2 bought it before. User 2: 20 (bought before), 21 (new). User 3: no
# list. Test window: user 1 bought 10 (two lines, 3.5 in all) and 12 (4.0), plus 13 and 14,
# which are not in the top 3; user 2 bought 20 (3.0).
RECS = recs([(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 13, 6), (2, 20, 1), (2, 21, 2)])
TRUTH = pairs([(1, 10), (1, 12), (1, 13), (1, 14), (2, 20)])
BOUGHT = pairs([(1, 10), (1, 11), (2, 12), (2, 20)])
SPEND = spend(
    [(1, 10, 2.0), (1, 10, 1.5), (1, 12, 4.0), (1, 13, 50.0), (1, 14, 100.0), (2, 20, 3.0)]
)


class TestSlotOutcomes:
    def test_per_user_counts_by_hand(self) -> None:
        """Catches: a new slot judged by the item alone (12 was bought, by user 2), a rank
        beyond k counted (13, 50.0), spend lines of a pair not summed (10: 2.0 + 1.5), spend on
        items not listed counted (14), a user without a list dropped (3)."""
        out = slot_outcomes(RECS, TRUTH, BOUGHT, SPEND, users([1, 2, 3]), 3).collect()
        got = {row[C.USER]: row for row in out.to_dicts()}
        assert set(got) == {1, 2, 3}
        assert {k: got[1][k] for k in ("slots", "new_slots", "hits", "new_hits")} == {
            "slots": 3,
            "new_slots": 1,
            "hits": 2,
            "new_hits": 1,
        }
        assert got[1]["revenue@3"] == pytest.approx(2.0 + 1.5 + 4.0)
        assert (got[2]["slots"], got[2]["new_slots"], got[2]["hits"], got[2]["new_hits"]) == (
            2,
            1,
            1,
            0,
        )
        assert got[2]["revenue@3"] == pytest.approx(3.0)
        assert (got[3]["slots"], got[3]["revenue@3"]) == (0, 0.0)

    def test_rates_pool_slots_over_users(self) -> None:
        """Pooled: 5 slots, 2 new (12, 21), 3 hits (10, 12, 20), 1 new hit (12). Catches the
        mean of per-user rates (repeat_hit would be (1/2 + 1/1) / 2 = 0.75, not 2/3) and a
        revenue mean over the users with a list only (5.25, not 3.5)."""
        out = discovery(slot_outcomes(RECS, TRUTH, BOUGHT, SPEND, users([1, 2, 3]), 3), 3)
        assert out == pytest.approx(
            {
                "revenue@3": (7.5 + 3.0 + 0.0) / 3,
                "new_share": 2 / 5,
                "repeat_hit": 2 / 3,
                "new_hit": 1 / 2,
            }
        )

    def test_undefined_rates_are_none(self) -> None:
        """Only repeat slots: new_hit is 0 / 0 slots, None rather than 0 or NaN (a list of
        only bought items did not miss on new items); no user at all: no rate, revenue 0."""
        only_repeat = recs([(1, 10, 1), (1, 11, 2)])
        out = discovery(slot_outcomes(only_repeat, TRUTH, BOUGHT, SPEND, users([1]), 3), 3)
        assert out == {"revenue@3": 3.5, "new_share": 0.0, "repeat_hit": 0.5, "new_hit": None}
        empty = discovery(slot_outcomes(RECS, TRUTH, BOUGHT, SPEND, users([]), 3), 3)
        assert empty == {"revenue@3": 0.0, "new_share": None, "repeat_hit": None, "new_hit": None}


def test_bought_before_and_spend_follow_the_windows() -> None:
    """Catches a window off by one week either side: week 7 is the last before the test
    window (8, 9), week 10 is after it; the pair bought in the test window only is not
    "bought before"."""
    tx = pl.LazyFrame(
        {
            C.USER: [1, 1, 1, 1, 2],
            C.ITEM: [10, 11, 11, 12, 10],
            C.WEEK: [7, 8, 9, 10, 8],
            C.SALES: [1.0, 2.0, 0.5, 9.0, 4.0],
        },
        schema={C.USER: pl.Int64, C.ITEM: pl.Int64, C.WEEK: pl.Int32, C.SALES: pl.Float64},
    )
    windows = Windows(first_week=1, history_end=5, target_end=8, test_end=10)
    assert bought_before(tx, windows).collect().rows() == [(1, 10)]
    got = spend_in_test_window(tx, windows).collect().sort(C.USER, C.ITEM).rows()
    assert got == [(1, 11, 2.5), (2, 10, 4.0)]


class TestRateDifference:
    def test_two_users_by_hand(self) -> None:
        """Model: user A 1 hit of 5 slots, B 0 of 5 (rate 1/10); anchor: A 0 of 4, B 1 of 1
        (rate 1/5). A resample of 2 users is AA (+0.2, prob 1/4), AB (-0.1, 1/2) or BB
        (0 - 1 = -1.0, 1/4). Catches the mean of per-user rate differences ((0.2 - 1) / 2 =
        -0.4) instead of the pooled difference -0.1."""
        hits = np.array([[1.0, 0.0], [0.0, 1.0]])
        slots = np.array([[5.0, 4.0], [5.0, 1.0]])
        out = rate_difference_interval(hits, slots, draws=1000, seed=1)
        assert out == pytest.approx({"mean": -0.1, "lo": -1.0, "hi": 0.2})

    def test_a_draw_without_anchor_slots_is_left_out(self) -> None:
        """Model A 1/1, B 0/1; anchor A 0/0, B 0/1. AA has no anchor slot (0 / 0): left out,
        so the interval is [0, 0.5] (BB: 0, AB: 0.5); catches NaN reaching the percentiles."""
        hits = np.array([[1.0, 0.0], [0.0, 0.0]])
        slots = np.array([[1.0, 0.0], [1.0, 1.0]])
        out = rate_difference_interval(hits, slots, draws=1000, seed=2)
        assert out == pytest.approx({"mean": 0.5, "lo": 0.0, "hi": 0.5})

    def test_a_model_without_slots_has_no_interval(self) -> None:
        """An anchor with no slot at all: no rate, so no difference (not 0 and no error)."""
        out = rate_difference_interval(np.ones((3, 2)), np.array([[1.0, 0.0]] * 3), 100, 0)
        assert out == {"mean": None, "lo": None, "hi": None}

    def test_paired_by_user_id(self) -> None:
        """Rows in different orders, and a user only the model has: pairs are by user id
        (positions would pair user 1's model row with user 2's anchor row)."""
        model = pl.DataFrame({C.USER: [1, 2, 9], "h": [1, 0, 5], "s": [1, 1, 5]})
        anchor = pl.DataFrame({C.USER: [2, 1], "h": [1, 0], "s": [1, 1]})
        per_user = {"m": model, "a": anchor}
        out = paired_rate_difference(per_user, "m", "a", ("h", "s"), draws=200, seed=3)
        assert (out["model"], out["anchor"], out["users"]) == ("m", "a", 2)
        assert out["mean"] == pytest.approx(0.0)  # 1/2 - 1/2 over users 1 and 2
        assert out["lo"] == pytest.approx(-1.0) and out["hi"] == pytest.approx(1.0)


def stage1_by_hand() -> Stage1Model:
    """Users 1, 2; items 10-13. Co-purchase similarity 10~11 0.9, 10~12 0.5, 10~13 0.2,
    11~12 0.3; user 1's recent baskets hold 10 once, user 2's hold 11 twice."""
    user_map = ids.id_map(np.array([1, 2]), C.USER, C.USER_IDX)
    item_map = ids.id_map(np.array([10, 11, 12, 13]), C.ITEM, C.ITEM_IDX)
    links = {(0, 1): 0.9, (0, 2): 0.5, (0, 3): 0.2, (1, 2): 0.3}
    rows = [r for (a, b) in links for r in (a, b)]
    cols = [c for (a, b) in links for c in (b, a)]
    vals = [v for v in links.values() for _ in range(2)]
    similarity = sp.csr_matrix((vals, (rows, cols)), shape=(4, 4), dtype=np.float32)
    seeds = sp.csr_matrix(([1.0, 2.0], ([0, 1], [0, 1])), shape=(2, 4), dtype=np.float32)
    empty = pl.DataFrame(schema={C.ITEM: pl.Int64, C.SCORE: pl.Float32})
    return Stage1Model(
        users=user_map,
        items=item_map,
        candidate_items=np.arange(4),
        als=None,
        user_items=sp.csr_matrix((2, 4), dtype=np.float32),
        own=pl.DataFrame(schema={C.USER: pl.Int64, C.ITEM: pl.Int64, C.SCORE: pl.Float32}),
        seeds=seeds,
        similarity=similarity,
        popular=empty,
        trend=empty,
        cut_day=100,
    )


class TestCopurchaseNew:
    def test_neighbours_never_bought_best_first(self) -> None:
        """User 1's neighbours are 11 (0.9), 12 (0.5), 13 (0.2); 11 was bought in an older
        basket (not a seed), so the list is 12, 13: catches leaving out the seed items only.
        User 2's are 10 (1.8), 12 (0.6), 13 (0): 12 was bought by user 3, not by user 2, so
        it stays (catches a per-item filter); 13 scores 0 and is no neighbour. User 3 is
        unknown to stage 1: no rows."""
        bought = pl.DataFrame({C.USER: [1, 1, 2, 3], C.ITEM: [10, 11, 11, 12]})
        out = copurchase_new_baseline(stage1_by_hand(), users([1, 2, 3]), bought, 5, 1).collect()
        got = {u: out.filter(pl.col(C.USER) == u).sort(C.RANK)[C.ITEM].to_list() for u in (1, 2, 3)}
        assert got == {1: [12, 13], 2: [10, 12], 3: []}
        assert out.filter(pl.col(C.USER) == 2).sort(C.RANK)[C.SCORE].to_list() == pytest.approx(
            [1.8, 0.6]
        )
        assert out.schema == C.RECOMMENDATIONS

    def test_top_k_cuts_after_the_exclusion(self) -> None:
        """k = 1: user 1 gets 12, the best item left once 11 is out (catches cutting the
        neighbours to k before leaving out the bought ones, which would leave nothing)."""
        bought = pl.DataFrame({C.USER: [1, 1, 2], C.ITEM: [10, 11, 11]})
        out = copurchase_new_baseline(stage1_by_hand(), users([1, 2]), bought, 1, 2).collect()
        assert sorted(out.select(C.USER, C.ITEM).rows()) == [(1, 12), (2, 10)]
