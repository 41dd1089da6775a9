"""Stage 1 on data whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from polars.testing import assert_frame_equal

from recsys_batch.config import AlsConfig, CandidatesConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import EmptyStageError
from recsys_batch.model.candidates import (
    Stage1Model,
    als_candidates,
    copurchase_candidates,
    fit_lines,
    fit_stage1,
    generate_candidates,
    generated_candidates,
    item_factors,
    load_stage1,
    save_stage1,
    union_candidates,
    user_factors,
)
from recsys_batch.model.generators import (
    co_occurrence,
    copurchase_similarity,
    own_scores,
    recent_seed_matrix,
)
from recsys_batch.model.ids import FitLines, compact_lines

PLACEHOLDER = 999999
GROUP_A_USERS = list(range(1, 9))
GROUP_B_USERS = list(range(11, 19))
GROUP_A_ITEMS = list(range(101, 111))
GROUP_B_ITEMS = list(range(201, 211))


def _transactions() -> pl.DataFrame:
    """Two user groups that never share an item; group A also buys the placeholder."""
    rng = np.random.default_rng(7)
    rows = []
    basket = 0
    for users, items in ((GROUP_A_USERS, GROUP_A_ITEMS), (GROUP_B_USERS, GROUP_B_ITEMS)):
        for user in users:
            liked = rng.choice(items, size=7, replace=False)
            for week in range(1, 9):
                basket += 1
                bought = rng.choice(liked, size=4, replace=False)
                extra = [PLACEHOLDER] if items is GROUP_A_ITEMS else []
                for item in [*bought.tolist(), *extra]:
                    rows.append((user, basket, week * 7, item, 1, week))
    frame = pl.DataFrame(
        rows, schema=[C.USER, C.BASKET, C.DAY, C.ITEM, C.QTY, C.WEEK], orient="row"
    )
    return frame.with_columns(pl.col(C.DAY).cast(pl.Int32), pl.col(C.WEEK).cast(pl.Int32))


CFG = CandidatesConfig(
    als=AlsConfig(factors=4, iterations=10, threads=1, regularization=0.01),
    n_als=5,
    n_own=5,
    n_copurchase=4,
    n_popular=3,
    n_trend=3,
    max_per_user=12,
    recent_baskets=2,
    trend_weeks=2,
    chunk_users=1000,
)


@pytest.fixture(scope="module")
def tx() -> pl.DataFrame:
    return _transactions()


@pytest.fixture(scope="module")
def catalogue() -> pl.DataFrame:
    return pl.DataFrame({C.ITEM: GROUP_A_ITEMS + GROUP_B_ITEMS})


@pytest.fixture(scope="module")
def model(tx: pl.DataFrame, catalogue: pl.DataFrame) -> Stage1Model:
    return fit_stage1(tx.lazy(), catalogue.lazy(), CFG, PLACEHOLDER)


def _users(ids: list[int]) -> pl.LazyFrame:
    return pl.LazyFrame({C.USER: ids}, schema={C.USER: pl.Int64})


class TestGenerateCandidates:
    @pytest.fixture(scope="class")
    def cands(self, model: Stage1Model) -> pl.DataFrame:
        return generate_candidates(model, _users(GROUP_A_USERS + GROUP_B_USERS), CFG).collect()

    def test_schema(self, cands: pl.DataFrame) -> None:
        assert cands.schema == C.CANDIDATES

    def test_every_user_has_candidates(self, cands: pl.DataFrame) -> None:
        assert set(cands[C.USER].unique()) == set(GROUP_A_USERS + GROUP_B_USERS)

    def test_als_stays_inside_group(self, cands: pl.DataFrame) -> None:
        als = cands.filter(pl.col(C.rank_col("als")).is_not_null())
        a = als.filter(pl.col(C.USER).is_in(GROUP_A_USERS))[C.ITEM]
        b = als.filter(pl.col(C.USER).is_in(GROUP_B_USERS))[C.ITEM]
        assert a.len() == len(GROUP_A_USERS) * CFG.n_als
        assert set(a) <= set(GROUP_A_ITEMS)
        assert set(b) <= set(GROUP_B_ITEMS)

    def test_copurchase_stays_inside_group(self, cands: pl.DataFrame) -> None:
        co = cands.filter(pl.col(C.rank_col("copurchase")).is_not_null())
        assert co.height > 0
        assert set(co.filter(pl.col(C.USER).is_in(GROUP_A_USERS))[C.ITEM]) <= set(GROUP_A_ITEMS)
        assert set(co.filter(pl.col(C.USER).is_in(GROUP_B_USERS))[C.ITEM]) <= set(GROUP_B_ITEMS)

    def test_own_purchases_are_candidates(self, tx: pl.DataFrame, cands: pl.DataFrame) -> None:
        bought = tx.filter(pl.col(C.ITEM) != PLACEHOLDER).select(C.USER, C.ITEM).unique()
        # n_own=5 keeps each user's 5 most recency-weighted items; all of them must be in.
        own = cands.filter(pl.col(C.rank_col("own")).is_not_null())
        assert own.group_by(C.USER).len()["len"].to_list() == [CFG.n_own] * own[C.USER].n_unique()
        assert own.join(bought, on=[C.USER, C.ITEM], how="anti").is_empty()

    def test_all_own_purchases_kept_when_they_fit(
        self, model: Stage1Model, tx: pl.DataFrame
    ) -> None:
        cfg = CFG.model_copy(update={"n_own": 50, "max_per_user": 60})
        cands = generate_candidates(model, _users(GROUP_A_USERS), cfg).collect()
        bought = (
            tx.filter(pl.col(C.ITEM) != PLACEHOLDER, pl.col(C.USER).is_in(GROUP_A_USERS))
            .select(C.USER, C.ITEM)
            .unique()
        )
        assert bought.join(cands, on=[C.USER, C.ITEM], how="anti").is_empty()

    def test_no_placeholder_no_duplicates_capped(self, cands: pl.DataFrame) -> None:
        assert PLACEHOLDER not in cands[C.ITEM].to_list()
        assert cands.select(C.USER, C.ITEM).is_duplicated().sum() == 0
        assert cands.group_by(C.USER).len()["len"].max() <= CFG.max_per_user

    def test_n_generators_counts_ranks(self, cands: pl.DataFrame) -> None:
        counted = pl.sum_horizontal(
            [pl.col(C.rank_col(g)).is_not_null().cast(pl.UInt8) for g in C.GENERATORS]
        )
        assert (cands[C.N_GENERATORS] == cands.select(counted).to_series()).all()

    def test_own_kept_first_when_capping(self, model: Stage1Model) -> None:
        cfg = CFG.model_copy(update={"max_per_user": CFG.n_own})
        cands = generate_candidates(model, _users(GROUP_B_USERS), cfg).collect()
        assert cands[C.rank_col("own")].null_count() == 0


def test_new_users_get_exactly_the_popular_list(model: Stage1Model) -> None:
    cands = generate_candidates(model, _users([5000, 5001]), CFG).collect()
    expected = model.popular.head(CFG.n_popular)[C.ITEM].to_list()
    for user in (5000, 5001):
        got = cands.filter(pl.col(C.USER) == user).sort(C.rank_col("popular"))
        assert got[C.ITEM].to_list() == expected
        assert got[C.rank_col("popular")].to_list() == list(range(1, CFG.n_popular + 1))
        assert got[C.N_GENERATORS].to_list() == [1] * CFG.n_popular


def test_popular_is_ranked_by_buyers(model: Stage1Model, tx: pl.DataFrame) -> None:
    buyers = (
        tx.filter(pl.col(C.ITEM) != PLACEHOLDER)
        .group_by(C.ITEM)
        .agg(pl.col(C.USER).n_unique().alias("n"))
        .sort(["n", C.ITEM], descending=[True, False])
    )
    assert model.popular[C.ITEM].to_list() == buyers[C.ITEM].to_list()


def test_chunked_recommend_equals_unchunked(model: Stage1Model) -> None:
    users = np.array(GROUP_A_USERS + GROUP_B_USERS, dtype=np.int64)
    whole = als_candidates(model, users, CFG).collect()
    chunked = als_candidates(model, users, CFG.model_copy(update={"chunk_users": 3})).collect()
    assert whole.height == len(users) * CFG.n_als
    assert_frame_equal(whole, chunked)


def test_generated_schema_and_ranks(model: Stage1Model) -> None:
    gen = generated_candidates(model, _users(GROUP_A_USERS), CFG).collect()
    assert gen.schema == C.GENERATED
    assert set(gen[C.GENERATOR].unique()) == set(C.GENERATORS)
    # ranks are 1..n within each (user, generator), best score first
    check = gen.group_by(C.USER, C.GENERATOR).agg(
        (pl.col(C.RANK).sort() == pl.int_range(1, pl.len() + 1)).all().alias("ok"),
        (pl.col(C.SCORE).sort_by(C.RANK).diff().drop_nulls() <= 0).all().alias("desc"),
    )
    assert check["ok"].all()
    assert check["desc"].all()


def test_placeholder_only_catalogue_is_never_proposed(tx: pl.DataFrame) -> None:
    # Even a catalogue listing the placeholder must not make it a candidate.
    cat = pl.DataFrame({C.ITEM: [*GROUP_A_ITEMS, PLACEHOLDER]})
    model = fit_stage1(tx.lazy(), cat.lazy(), CFG, PLACEHOLDER)
    cands = generate_candidates(model, _users(GROUP_A_USERS), CFG).collect()
    assert PLACEHOLDER not in cands[C.ITEM].to_list()
    assert set(cands[C.ITEM]) <= set(GROUP_A_ITEMS)


def test_deterministic_for_a_seed(tx: pl.DataFrame, catalogue: pl.DataFrame) -> None:
    first = fit_stage1(tx.lazy(), catalogue.lazy(), CFG, PLACEHOLDER)
    second = fit_stage1(tx.lazy(), catalogue.lazy(), CFG, PLACEHOLDER)
    users = _users(GROUP_A_USERS + GROUP_B_USERS)
    assert_frame_equal(
        generate_candidates(first, users, CFG).collect(),
        generate_candidates(second, users, CFG).collect(),
    )


def test_factors_exported(model: Stage1Model) -> None:
    items = item_factors(model)
    users = user_factors(model)
    assert items.matrix.shape == (len(GROUP_A_ITEMS + GROUP_B_ITEMS), CFG.als.factors)
    assert set(items.ids.ids) == set(GROUP_A_ITEMS + GROUP_B_ITEMS)
    assert set(users.ids.ids) == set(GROUP_A_USERS + GROUP_B_USERS)
    assert users.matrix.shape == (len(users), CFG.als.factors)
    assert items.matrix.dtype == users.matrix.dtype == np.float32
    # Row i of each matrix is the factor of ids[i] in the fitted model.
    first_item = int(model.items.to_idx(items.ids.ids[:1])[0])
    assert np.array_equal(items.matrix[0], np.asarray(model.als.item_factors)[first_item])


def test_save_load_roundtrip(model: Stage1Model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m" / "stage1.pkl"
    save_stage1(model, path)
    loaded = load_stage1(path)
    users = _users(GROUP_A_USERS)
    assert_frame_equal(
        generate_candidates(loaded, users, CFG).collect(),
        generate_candidates(model, users, CFG).collect(),
    )


def test_popular_and_trend_skip_own_items(model: Stage1Model) -> None:
    gen = generated_candidates(model, _users(GROUP_A_USERS), CFG).collect()
    own = gen.filter(pl.col(C.GENERATOR) == "own").select(C.USER, C.ITEM)
    for g, n in (("popular", CFG.n_popular), ("trend", CFG.n_trend)):
        rows = gen.filter(pl.col(C.GENERATOR) == g)
        assert rows.join(own, on=[C.USER, C.ITEM], how="semi").is_empty()
        assert rows.group_by(C.USER).len()["len"].to_list() == [n] * len(GROUP_A_USERS)


def test_chunked_copurchase_equals_unchunked(model: Stage1Model) -> None:
    users = np.array(GROUP_A_USERS + GROUP_B_USERS, dtype=np.int64)
    whole = copurchase_candidates(model, users, CFG).collect()
    chunked = copurchase_candidates(
        model, users, CFG.model_copy(update={"chunk_users": 2})
    ).collect()
    assert whole.height > 0
    assert_frame_equal(whole, chunked)


class TestUnionPriority:
    """Own first, then the best rank among non-own items relative to the generator size."""

    @staticmethod
    def _generated() -> pl.LazyFrame:
        rows = [
            (1, 1, "own", 1),
            (1, 2, "own", 2),
            (1, 2, "als", 1),  # also own: does not use up an ALS slot
            (1, 3, "als", 2),  # new rank 1 of 4 -> 0.25
            (1, 4, "als", 3),  # 2/4 = 0.5
            (1, 5, "als", 4),  # 3/4 = 0.75
            (1, 6, "trend", 1),  # 1/2 = 0.5, ties with item 4, loses on item id
            (1, 7, "trend", 2),  # 2/2 = 1.0
        ]
        return pl.LazyFrame(
            [(u, i, g, float(10 - r), r) for u, i, g, r in rows],
            schema=C.GENERATED,
            orient="row",
        )

    @pytest.mark.parametrize(
        ("cap", "expected"),
        [
            (1, [1]),
            (2, [1, 2]),
            (4, [1, 2, 3, 4]),
            (5, [1, 2, 3, 4, 6]),
            (9, [1, 2, 3, 4, 6, 5, 7]),
        ],
    )
    def test_cap_keeps_by_priority(self, cap: int, expected: list[int]) -> None:
        cfg = CandidatesConfig(n_als=4, n_trend=2, max_per_user=cap)
        union = union_candidates(self._generated(), cfg).collect()
        assert union[C.ITEM].to_list() == expected
        assert union.schema == C.CANDIDATES

    def test_item_from_two_generators_has_both_ranks(self) -> None:
        cfg = CandidatesConfig(n_als=4, n_trend=2, max_per_user=10)
        union = union_candidates(self._generated(), cfg).collect()
        row = union.filter(pl.col(C.ITEM) == 2).row(0, named=True)
        assert (row[C.rank_col("own")], row[C.rank_col("als")]) == (2, 1)
        assert row[C.rank_col("trend")] is None
        assert row[C.N_GENERATORS] == 2


def test_no_users_gives_an_empty_frame_with_the_schema(model: Stage1Model) -> None:
    cands = generate_candidates(model, _users([]), CFG).collect()
    assert cands.is_empty()
    assert cands.schema == C.CANDIDATES


def test_fit_without_transactions_raises(catalogue: pl.DataFrame, tx: pl.DataFrame) -> None:
    with pytest.raises(EmptyStageError, match="no transactions"):
        fit_stage1(tx.clear().lazy(), catalogue.lazy(), CFG, PLACEHOLDER)


def test_chunked_generate_equals_unchunked(model: Stage1Model) -> None:
    users = _users([5000, *GROUP_A_USERS, *GROUP_B_USERS])
    whole = generate_candidates(model, users, CFG).collect()
    chunked = generate_candidates(model, users, CFG.model_copy(update={"chunk_users": 3})).collect()
    assert whole[C.USER].n_unique() == 1 + len(GROUP_A_USERS) + len(GROUP_B_USERS)
    assert_frame_equal(whole, chunked)


def test_blas_limited_to_one_thread_during_fit(
    tx: pl.DataFrame,
    catalogue: pl.DataFrame,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # implicit warns (RuntimeWarning, an error under our pytest config) when BLAS has more
    # than one thread at model construction, once per process: re-arm its check, give BLAS
    # two threads, and the fit must still build and fit the model inside its 1-thread limit.
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    monkeypatch.setattr("implicit.utils._checked_blas_config", False)
    with threadpool_limits(2, "blas"), caplog.at_level("WARNING"):
        fit_stage1(tx.lazy(), catalogue.lazy(), CFG, PLACEHOLDER)
    assert any("limiting it to 1" in r.getMessage() for r in caplog.records)


class TestRepeatedLinesCountOnce:
    """A basket that scans an item twice (a real pattern in the Dunnhumby data) counts once.

    The generators filter to the catalogue or the recent baskets before de-duplicating lines
    (to keep the 100x refit's hash tables small); these pin that the result is the same.
    """

    LINES = pl.DataFrame(
        {
            C.USER: [1, 1, 1, 1, 1, 2, 2],
            C.BASKET: [10, 10, 10, 11, 12, 20, 20],
            C.DAY: [1, 1, 1, 5, 9, 3, 3],
            C.ITEM: [101, 101, PLACEHOLDER, 101, 102, 101, 102],
            C.WEEK: [1, 1, 1, 1, 2, 1, 1],
        },
        schema_overrides={C.DAY: pl.Int32, C.WEEK: pl.Int32},
    )

    @staticmethod
    def _candidates(fit: FitLines) -> np.ndarray:
        return np.sort(fit.items.to_idx(np.array([101, 102])))

    def test_own_scores_count_baskets_not_lines(self) -> None:
        fit = compact_lines(self.LINES.lazy(), part_lines=1_000)
        got = own_scores(fit, self._candidates(fit), cut_day=9, half_life_days=4.0)
        scores = {(r[C.USER], r[C.ITEM]): r[C.SCORE] for r in got.iter_rows(named=True)}
        # user 1, item 101: baskets on day 1 (age 8 = 2 half-lives) and day 5 (1 half-life)
        assert scores[(1, 101)] == pytest.approx(0.25 + 0.5)
        assert scores[(1, 102)] == pytest.approx(1.0)
        assert set(scores) == {(1, 101), (1, 102), (2, 101), (2, 102)}  # no placeholder
        assert got.schema == pl.Schema({C.USER: pl.Int64, C.ITEM: pl.Int64, C.SCORE: pl.Float32})

    def test_recent_seeds_count_each_basket_once(self) -> None:
        fit = compact_lines(self.LINES.lazy(), part_lines=1_000)
        seeds = recent_seed_matrix(fit, recent_baskets=2).toarray()
        row = seeds[fit.users.to_idx(np.array([1]))[0]]
        # user 1's last two baskets are 12 (day 9: 102) and 11 (day 5: 101)
        assert row[fit.items.to_idx(np.array([101]))[0]] == 1.0
        assert row[fit.items.to_idx(np.array([102]))[0]] == 1.0
        assert row[fit.items.to_idx(np.array([PLACEHOLDER]))[0]] == 0.0

    def test_copurchase_ignores_repeated_scans(self) -> None:
        fit = compact_lines(self.LINES.lazy(), part_lines=1_000)
        once = compact_lines(self.LINES.unique(subset=[C.BASKET, C.ITEM]).lazy(), part_lines=1_000)
        cand = self._candidates(fit)
        sim = copurchase_similarity(fit, cand, neighbours=5).toarray()
        sim_once = copurchase_similarity(once, cand, neighbours=5).toarray()
        np.testing.assert_allclose(sim, sim_once)
        a, b = fit.items.to_idx(np.array([101, 102]))
        # 101 in 3 baskets, 102 in 2, together in 1 (basket 20): cosine 1 / sqrt(3 * 2)
        assert sim[a, b] == pytest.approx(1 / np.sqrt(6))


class TestCompactFit:
    """Stage 1 fits in index space (issue #17): dense UInt32 indexes in business-id order."""

    def test_fit_lines_are_compact(self, tx: pl.DataFrame) -> None:
        fit = fit_lines(tx.lazy(), CFG)
        assert fit.lines.schema == C.FIT_LINES
        assert fit.lines.height == tx.height
        # the rows, in order, are the input's lines
        assert fit.users.to_ids(fit.lines[C.USER_IDX].to_numpy()).tolist() == tx[C.USER].to_list()
        assert fit.items.to_ids(fit.lines[C.ITEM_IDX].to_numpy()).tolist() == tx[C.ITEM].to_list()

    def test_quantity_interaction_keeps_the_quantity(self, tx: pl.DataFrame) -> None:
        cfg = CFG.model_copy(update={"als": CFG.als.model_copy(update={"interaction": "quantity"})})
        assert fit_lines(tx.lazy(), cfg).lines.schema == pl.Schema({**C.FIT_LINES, C.QTY: pl.Int64})

    def test_returns_are_dropped(self, tx: pl.DataFrame) -> None:
        returned = tx.head(3).with_columns(pl.lit(-1, dtype=pl.Int64).alias(C.QTY))
        fit = fit_lines(pl.concat([tx, returned]).lazy(), CFG)
        assert fit.lines.height == tx.height

    def test_parts_change_nothing(self, tx: pl.DataFrame, catalogue: pl.DataFrame) -> None:
        # 100 lines a part: every group-by runs over several ranges of users or baskets
        cfg = CFG.model_copy(update={"fit_part_lines": 100})
        assert fit_lines(tx.lazy(), cfg).lines.height > 3 * 100
        whole = fit_stage1(tx.lazy(), catalogue.lazy(), CFG, PLACEHOLDER)
        parts = fit_stage1(tx.lazy(), catalogue.lazy(), cfg, PLACEHOLDER)
        for name in ("user_items", "seeds", "similarity"):
            a, b = getattr(whole, name), getattr(parts, name)
            assert (a != b).nnz == 0, name
            assert a.nnz == b.nnz, name
        sort = [C.USER, C.ITEM]
        assert_frame_equal(whole.own.sort(sort), parts.own.sort(sort))

    def test_model_rows_and_columns_in_id_order(self, model: Stage1Model) -> None:
        assert model.users.ids.tolist() == sorted(GROUP_A_USERS + GROUP_B_USERS)
        assert model.items.ids.tolist() == sorted([*GROUP_A_ITEMS, *GROUP_B_ITEMS, PLACEHOLDER])
        # user 1 is row 0 and bought the placeholder (the last column) in each of 8 baskets
        assert model.user_items[0, len(model.items) - 1] == 8.0
        assert model.candidate_items.tolist() == list(range(len(GROUP_A_ITEMS + GROUP_B_ITEMS)))
        assert model.own.schema == pl.Schema(
            {C.USER: pl.Int64, C.ITEM: pl.Int64, C.SCORE: pl.Float32}
        )
        assert model.popular.schema == pl.Schema({C.ITEM: pl.Int64, C.SCORE: pl.Float32})


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_co_occurrence_in_blocks_equals_one_product(threads: int) -> None:
    rng = np.random.default_rng(threads)
    dense = (rng.random((50, 12)) < 0.3).astype(np.float32)
    baskets = sp.csr_matrix(dense)
    got = co_occurrence(baskets, threads)
    assert isinstance(got, sp.csr_matrix)
    assert np.array_equal(got.toarray(), dense.T @ dense)
