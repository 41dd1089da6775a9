"""New-item candidates (#26) on data whose answer is known by construction."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import AlsConfig, CandidatesConfig, NewItemsConfig
from recsys_batch.data import columns as C
from recsys_batch.model.candidates import Stage1Model, fit_stage1
from recsys_batch.model.new_items import (
    GENERATOR_REASONS,
    REASON,
    new_item_candidates,
    top_new,
    union_new,
)
from recsys_batch.model.new_items_ranking import first_buyer_items

PLACEHOLDER = 999999
GROUP_A_USERS = list(range(1, 9))
GROUP_B_USERS = list(range(11, 19))
GROUP_A_ITEMS = list(range(101, 111))
GROUP_B_ITEMS = list(range(201, 211))
LATE_USER, LATE_ITEM, LATE_WEEK = 1, None, 9
"""User 1 buys, in week 9 only (after the stage-1 fit), one group-A item never bought before."""
FIT_END = 9
"""Stage 1 is fit on weeks < 9, as on the history of a training run."""


def _transactions() -> pl.DataFrame:
    """Two user groups that never share an item (weeks 1-8), one late purchase in week 9."""
    rng = np.random.default_rng(7)
    rows = []
    basket = 0
    for users, items in ((GROUP_A_USERS, GROUP_A_ITEMS), (GROUP_B_USERS, GROUP_B_ITEMS)):
        for user in users:
            liked = rng.choice(items, size=7, replace=False)
            for week in range(1, 9):
                basket += 1
                for item in rng.choice(liked, size=4, replace=False).tolist():
                    rows.append((user, basket, week * 7, item, 1, week))
    frame = pl.DataFrame(
        rows, schema=[C.USER, C.BASKET, C.DAY, C.ITEM, C.QTY, C.WEEK], orient="row"
    )
    never = sorted(set(GROUP_A_ITEMS) - set(frame.filter(pl.col(C.USER) == LATE_USER)[C.ITEM]))
    late = pl.DataFrame(
        [(LATE_USER, basket + 1, LATE_WEEK * 7, never[0], 1, LATE_WEEK)],
        schema=frame.schema,
        orient="row",
    )
    return pl.concat([frame, late]).with_columns(
        pl.col(C.DAY).cast(pl.Int32), pl.col(C.WEEK).cast(pl.Int32)
    )


CFG = CandidatesConfig(
    als=AlsConfig(factors=4, iterations=10, threads=1, regularization=0.01),
    recent_baskets=2,
    trend_weeks=2,
)
# Quotas above the catalogue (20 items): ALS, whose scores are finite for every item,
# proposes every catalogue item a user never bought.
NEW = NewItemsConfig(n_copurchase=30, n_als=30, n_category=30, n_trend=30, max_per_user=100)


@pytest.fixture(scope="module")
def tx() -> pl.DataFrame:
    return _transactions()


@pytest.fixture(scope="module")
def late_item(tx: pl.DataFrame) -> int:
    return int(tx.filter(pl.col(C.WEEK) == LATE_WEEK)[C.ITEM].item())


@pytest.fixture(scope="module")
def model(tx: pl.DataFrame) -> Stage1Model:
    catalogue = pl.LazyFrame({C.ITEM: GROUP_A_ITEMS + GROUP_B_ITEMS})
    return fit_stage1(tx.filter(pl.col(C.WEEK) < FIT_END).lazy(), catalogue, CFG, PLACEHOLDER)


@pytest.fixture(scope="module")
def items() -> pl.LazyFrame:
    """Each group of items is one sub-category."""
    return pl.LazyFrame(
        {
            C.ITEM: GROUP_A_ITEMS + GROUP_B_ITEMS,
            C.SUB_CATEGORY: ["A"] * len(GROUP_A_ITEMS) + ["B"] * len(GROUP_B_ITEMS),
        }
    )


def _users(ids: list[int]) -> pl.LazyFrame:
    return pl.LazyFrame({C.USER: ids}, schema={C.USER: pl.Int64})


def _cands(
    model: Stage1Model, tx: pl.DataFrame, items: pl.LazyFrame, as_of_week: int, **kw: object
) -> pl.DataFrame:
    users = _users(GROUP_A_USERS + GROUP_B_USERS + [99])
    return new_item_candidates(model, users, tx.lazy(), as_of_week, items, NEW, **kw)  # type: ignore[arg-type]


class TestNeverBought:
    def test_an_item_bought_after_the_fit_is_never_proposed(
        self, model: Stage1Model, tx: pl.DataFrame, items: pl.LazyFrame, late_item: int
    ) -> None:
        """Mutation caught: "bought" taken from stage 1's fit (the history window) only."""

        def proposed(as_of_week: int) -> bool:
            cands = _cands(model, tx, items, as_of_week)
            return (
                cands.filter((pl.col(C.USER) == LATE_USER) & (pl.col(C.ITEM) == late_item)).height
                > 0
            )

        assert proposed(FIT_END)  # not bought yet: ALS proposes every never-bought item
        assert not proposed(FIT_END + 1)

    def test_only_catalogue_items_never_bought_before_the_cut(
        self, model: Stage1Model, tx: pl.DataFrame, items: pl.LazyFrame
    ) -> None:
        cands = _cands(model, tx, items, FIT_END + 1)
        bought = tx.select(C.USER, C.ITEM).unique()
        assert cands.join(bought, on=[C.USER, C.ITEM], how="semi").height == 0
        assert set(cands[C.ITEM]) <= set(GROUP_A_ITEMS + GROUP_B_ITEMS)
        # Every never-bought catalogue item of a known user is proposed (ALS covers them).
        expected = (
            20 * len(GROUP_A_USERS + GROUP_B_USERS)
            - bought.filter(pl.col(C.ITEM) != PLACEHOLDER).height
        )
        assert cands.filter(pl.col(C.USER) != 99).height == expected
        assert cands.select(pl.struct(C.USER, C.ITEM).is_duplicated().any()).item() is False


class TestGenerators:
    def test_copurchase_and_category_stay_inside_the_group(
        self, model: Stage1Model, tx: pl.DataFrame, items: pl.LazyFrame
    ) -> None:
        cands = _cands(model, tx, items, FIT_END)
        for gen in ("copurchase", "category"):
            rows = cands.filter(pl.col(C.rank_col(gen)).is_not_null())
            assert rows.height > 0
            group_a = rows.filter(pl.col(C.USER).is_in(GROUP_A_USERS))
            assert set(group_a[C.ITEM]) <= set(GROUP_A_ITEMS), gen
            group_b = rows.filter(pl.col(C.USER).is_in(GROUP_B_USERS))
            assert set(group_b[C.ITEM]) <= set(GROUP_B_ITEMS), gen

    def test_an_unknown_user_gets_the_list_generators_only(
        self, model: Stage1Model, tx: pl.DataFrame, items: pl.LazyFrame
    ) -> None:
        promoted = pl.DataFrame({C.ITEM: [203, 105], C.SCORE: [2.0, 1.0]})
        cands = _cands(model, tx, items, FIT_END, item_lists={"promoted": promoted})
        unknown = cands.filter(pl.col(C.USER) == 99)
        trend = set(model.trend[C.ITEM]) | {203, 105}
        assert set(unknown[C.ITEM]) == trend
        assert unknown.filter(pl.col(C.ITEM) == 203)[REASON].item() == "promoted"
        assert set(cands[REASON]) <= set(GENERATOR_REASONS.values())

    def test_a_promoted_item_already_bought_is_not_proposed(
        self, model: Stage1Model, tx: pl.DataFrame, items: pl.LazyFrame
    ) -> None:
        bought = tx.filter(pl.col(C.USER) == 2)[C.ITEM].unique().sort()
        promoted = pl.DataFrame({C.ITEM: bought, C.SCORE: [1.0] * bought.len()})
        cands = _cands(model, tx, items, FIT_END, item_lists={"promoted": promoted})
        assert cands.filter(pl.col(C.USER) == 2)[C.ITEM].is_in(bought.implode()).sum() == 0
        assert cands.filter(pl.col(C.rank_col("promoted")).is_not_null()).height > 0


def test_top_new_best_allowed_first_ties_by_item() -> None:
    scores = np.array(
        [[3.0, np.nan, 5.0, 1.0, 9.0], [2.0, 2.0, 0.5, 7.0, np.nan]], dtype=np.float32
    )
    allowed = np.array([[True, True, True, True, False], [True, True, True, False, True]])
    rows, items, values = top_new(scores, allowed, 2)
    assert rows.tolist() == [0, 0, 1, 1]
    assert items.tolist() == [2, 0, 0, 1]  # item 4 (9.0) and item 3 (7.0) are bought
    assert values.tolist() == [5.0, 3.0, 2.0, 2.0]


def _top_new_by_full_sort(
    scores: np.ndarray, allowed: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: a stable sort of every item of every row (what top_new did before)."""
    masked = np.where(allowed & np.isfinite(scores), scores, -np.inf)
    k = min(n, masked.shape[1])
    top = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(masked, top, axis=1)
    ok = np.isfinite(values)
    rows = np.repeat(np.arange(masked.shape[0]), k).reshape(masked.shape[0], k)
    return rows[ok], top[ok], values[ok].astype(np.float32)


@pytest.mark.parametrize("n", [1, 3, 7, 40, 60])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_new_equals_a_stable_full_sort(n: int, seed: int) -> None:
    """Scores drawn from a few values (many ties at each row's k-th best, 0.0 and -0.0),
    NaNs, masked items and rows with fewer than ``n`` allowed items: the same rows, items
    and values in the same order as a stable sort of every item. Mutation caught: ties at
    the threshold kept by anything but the lower item index, or more than ``n`` per row."""
    rng = np.random.default_rng(seed)
    scores = rng.choice([-1.0, -0.0, 0.0, 0.5, 2.0, 3.0, np.nan], size=(30, 50)).astype(np.float32)
    allowed = rng.random((30, 50)) < 0.7
    allowed[3] = False  # a row with nothing allowed
    allowed[4, :2] = True  # and one with only two items allowed
    allowed[4, 2:] = False
    got = top_new(scores, allowed, n)
    expected = _top_new_by_full_sort(scores, allowed, n)
    for part, want in zip(got, expected, strict=True):
        assert part.tolist() == want.tolist()


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        (3, [(1, "bought_with"), (3, "similar_customers"), (2, "trending")]),
        (2, [(1, "bought_with"), (3, "similar_customers")]),
    ],
)
def test_union_keeps_best_relative_rank_and_its_reason(
    cap: int, expected: list[tuple[int, str]]
) -> None:
    """Item 1: co-purchase 1/10 beats ALS 1/5; item 3: ALS 2/5 ties category 4/10 (ALS wins
    the tie); item 2: trend 1/2. Mutation caught: reason of the first generator listed, or
    ordering by raw rank (item 2's trend rank 1 would come first)."""
    generated = pl.LazyFrame(
        {
            C.USER: [7] * 5,
            C.ITEM: [1, 1, 2, 3, 3],
            C.GENERATOR: ["als", "copurchase", "trend", "category", "als"],
            C.SCORE: [0.9, 0.5, 10.0, 0.2, 0.8],
            C.RANK: [1, 1, 1, 4, 2],
        },
        schema=C.GENERATED,
    )
    quotas = {"copurchase": 10, "als": 5, "category": 10, "trend": 2}
    got = union_new(generated, quotas, cap).collect()
    assert list(zip(got[C.ITEM], got[REASON], strict=True)) == expected
    assert got.filter(pl.col(C.ITEM) == 1).select(
        C.rank_col("als"), C.rank_col("copurchase"), C.N_GENERATORS
    ).row(0) == (1, 1, 2)
    assert_frame_equal(
        got.select(C.ITEM, C.rank_col("category")).head(2),
        pl.DataFrame({C.ITEM: [1, 3], C.rank_col("category"): [None, 4]}),
        check_dtypes=False,
    )


class TestFirstBuyers:
    """Item first buyers, counted by hand (cut 10, recent weeks 2: recent = weeks 8-9,
    previous = weeks 6-7)."""

    ROWS: ClassVar[list[tuple[int, int, int]]] = [
        # user, item, week
        (1, 101, 8),  # first purchase of 101 by user 1: recent
        (1, 101, 9),
        (2, 101, 3),  # user 2 bought 101 long ago and again lately: not a first buyer
        (2, 101, 9),
        (3, 101, 6),  # previous
        (3, 102, 7),  # previous
        (4, 102, 9),  # recent
        (4, 102, 10),  # at the cut: never read
        (5, 103, 10),  # at the cut: never read
        (5, PLACEHOLDER, 9),
    ]

    def _tx(self, rows: list[tuple[int, int, int]]) -> pl.LazyFrame:
        return pl.LazyFrame(rows, schema=[C.USER, C.ITEM, C.WEEK], orient="row")

    def test_by_hand(self) -> None:
        got = first_buyer_items([self._tx(self.ROWS)], 10, 2, PLACEHOLDER)
        expected = pl.DataFrame(
            {
                C.ITEM: [101, 102],
                "if_first_recent": [1.0, 1.0],
                "if_first_previous": [1.0, 1.0],
                "if_first_share": [1 / 2, 1 / 1],  # 101: users 1 and 2 bought it lately
            },
            schema_overrides={
                "if_first_recent": pl.Float32,
                "if_first_previous": pl.Float32,
                "if_first_share": pl.Float32,
            },
        )
        assert_frame_equal(got, expected)

    def test_parts_of_whole_users_sum_to_the_whole(self) -> None:
        """A shard's driver computes it over parts: the sum must equal one pass (mutation
        caught: a share averaged over parts)."""
        rows = self.ROWS
        whole = first_buyer_items([self._tx(rows)], 10, 2, PLACEHOLDER)
        parts = [
            self._tx([r for r in rows if r[0] in (1, 3)]),
            self._tx([r for r in rows if r[0] not in (1, 3)]),
        ]
        assert_frame_equal(first_buyer_items(parts, 10, 2, PLACEHOLDER), whole)
