"""The issue-#4 backtest on small synthetic data: protocol, user sets, determinism."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.data import columns as C
from recsys_batch.data.sources import Dataset
from recsys_batch.evaluation.backtest import (
    BacktestResult,
    reseeded,
    run_backtest,
    run_candidate_backtest,
    run_seeded_backtest,
    seed_spread,
)
from recsys_batch.evaluation.baselines import own_purchases_baseline
from recsys_batch.evaluation.bootstrap import interval
from recsys_batch.evaluation.origins import OriginsResult, cut_after, holdout_weeks, run_origins
from recsys_batch.evaluation.protocol import evaluation_users, prepare
from recsys_batch.evaluation.rows import MODELS, USER_SETS
from recsys_batch.model import split
from recsys_batch.model.prefilter import FUNNEL, RULES
from tests.small import SMALL_SETTINGS as SETTINGS
from tests.small import small_dataset as dataset


@pytest.fixture(scope="module")
def result() -> BacktestResult:
    return run_backtest(dataset(), SETTINGS)


class TestProtocol:
    def test_windows_follow_the_issue(self) -> None:
        prep = prepare(dataset(), SETTINGS)
        w = prep["windows"]
        last = 53  # synthetic data spans weeks 1..53
        assert (w.target_end, w.history_end, w.test_end) == (last - 3, last - 9, last + 1)

    def test_catalogue_ignores_the_test_window(self) -> None:
        ds = dataset()
        w = prepare(ds, SETTINGS)["windows"]
        # Sell a brand-new item massively in the test window only: it must not enter.
        extra = ds.transactions.filter(pl.col(C.WEEK) >= w.target_end).with_columns(
            pl.lit(777_777_777, dtype=pl.Int64).alias(C.ITEM)
        )
        changed = Dataset(pl.concat([ds.transactions, extra]), ds.items, ds.users, "changed")
        base = prepare(ds, SETTINGS)["catalogue"]
        assert prepare(changed, SETTINGS)["catalogue"].equals(base)

    def test_without_the_funnel_everything_else_is_the_same(self) -> None:
        """The quality gate's ``prepare(..., funnel=False)``: an empty funnel of its schema,
        the same catalogue and transactions. Mutation caught: the flag also changing the
        catalogue, or a funnel of another schema."""
        full = prepare(dataset(), SETTINGS)
        lean = prepare(dataset(), SETTINGS, funnel=False)
        assert full["funnel"].height == len(RULES)
        assert lean["funnel"].is_empty()
        assert lean["funnel"].schema == full["funnel"].schema == FUNNEL
        assert_frame_equal(lean["catalogue"], full["catalogue"])
        assert_frame_equal(lean["tx"], full["tx"], check_row_order=False)

    def test_user_sets(self) -> None:
        tx = pl.LazyFrame(
            {
                C.USER: [1, 1, 2, 3, 3, 3, 3, 3, 3],
                C.ITEM: [10, 11, 12, 10, 10, 11, 12, 13, 14],
                C.WEEK: [1, 9, 9, 1, 9, 9, 9, 9, 9],
            },
            schema={C.USER: pl.Int64, C.ITEM: pl.Int64, C.WEEK: pl.Int32},
        )
        w = split.Windows(first_week=1, history_end=5, target_end=8, test_end=10)
        truth = tx.filter(pl.col(C.WEEK) >= 8).select(C.USER, C.ITEM).unique()
        sets = {
            k: sorted(v.collect()[C.USER].to_list())
            for k, v in evaluation_users(tx, truth, w).items()
        }
        # user 2 never bought before the test window; user 3 bought 5 distinct items in it.
        assert sets == {"all": [1, 3], "seed": [3]}

    def test_own_purchases_baseline_recency_and_padding(self) -> None:
        tx = pl.LazyFrame(
            {C.USER: [1, 1, 1], C.ITEM: [10, 11, 11], C.DAY: [1, 90, 100]},
            schema={C.USER: pl.Int64, C.ITEM: pl.Int64, C.DAY: pl.Int32},
        )
        catalogue = pl.LazyFrame({C.ITEM: [10, 11, 12, 13]}, schema={C.ITEM: pl.Int64})
        users = pl.LazyFrame({C.USER: [1]}, schema={C.USER: pl.Int64})
        out = own_purchases_baseline(tx, catalogue, users, [12, 10, 13], 30.0, 4).collect()
        assert out[C.ITEM].to_list() == [11, 10, 12, 13]  # own by recency, then popular
        assert out[C.RANK].to_list() == [1, 2, 3, 4]


class TestResult:
    def test_rows_cover_every_model_and_user_set(self, result: BacktestResult) -> None:
        assert [(r["model"], r["user_set"]) for r in result.rows] == [
            (m, s) for m in MODELS for s in USER_SETS
        ]
        keys = {
            "model",
            "user_set",
            "users",
            "precision@5",
            "recall@5",
            "map@5",
            "ndcg@5",
            "coverage",
            "revenue@5",
            "new_share",
            "repeat_hit",
            "new_hit",
        }
        assert all(set(r) == keys for r in result.rows)

    def test_same_users_for_every_model(self, result: BacktestResult) -> None:
        for user_set in USER_SETS:
            counts = {r["users"] for r in result.rows if r["user_set"] == user_set}
            assert len(counts) == 1
        all_n = next(r["users"] for r in result.rows if r["user_set"] == "all")
        seed_n = next(r["users"] for r in result.rows if r["user_set"] == "seed")
        assert 0 < seed_n < all_n

        # Popular's precision@5 on the seed users, counted by hand from the protocol: everyone
        # gets the catalogue items with the most distinct buyers in the 4 weeks before the test
        # window (ties: lower id); seed users bought before the test window and at least 5
        # distinct catalogue items in it.
        prep = prepare(dataset(), SETTINGS)
        w, catalogue = prep["windows"], set(prep["catalogue"][C.ITEM])
        placeholder = SETTINGS.prefilter.placeholder_item
        recent_buyers: dict[int, set[int]] = {}
        bought_before: set[int] = set()
        bought_in_test: dict[int, set[int]] = {}
        for user, item, week in prep["tx"].select(C.USER, C.ITEM, C.WEEK).iter_rows():
            if week < w.target_end:
                bought_before.add(user)
                if week >= w.target_end - 4 and item in catalogue:
                    recent_buyers.setdefault(item, set()).add(user)
            elif week < w.test_end and item != placeholder:
                bought_in_test.setdefault(user, set()).add(item)
        popular = set(sorted(recent_buyers, key=lambda i: (-len(recent_buyers[i]), i))[:5])
        seed = [u for u, items in bought_in_test.items() if u in bought_before and len(items) >= 5]
        hits = sum(len(bought_in_test[u] & popular) for u in seed)
        assert len(seed) == seed_n
        assert hits > 0  # the check below is not 0 == 0
        assert result.precision("popular", "seed") == pytest.approx(hits / (5 * len(seed)))

    def test_popular_revenue_and_discovery_by_hand_issue_26(self, result: BacktestResult) -> None:
        """Popular's revenue@5, new_share, repeat_hit and new_hit on the "seed" users, counted
        from the transactions: catches a spend or "bought before" taken from the wrong weeks
        (e.g. the stage-1 history only, or the test window included) or from raw item ids."""
        prep = prepare(dataset(), SETTINGS)
        w, catalogue = prep["windows"], set(prep["catalogue"][C.ITEM])
        placeholder = SETTINGS.prefilter.placeholder_item
        recent_buyers: dict[int, set[int]] = {}
        before: set[tuple[int, int]] = set()
        spend: dict[tuple[int, int], float] = {}
        bought_in_test: dict[int, set[int]] = {}
        rows = prep["tx"].select(C.USER, C.ITEM, C.WEEK, C.SALES).iter_rows()
        for user, item, week, sales in rows:
            if week < w.target_end:
                before.add((user, item))
                if week >= w.target_end - 4 and item in catalogue:
                    recent_buyers.setdefault(item, set()).add(user)
            elif week < w.test_end:
                spend[(user, item)] = spend.get((user, item), 0.0) + sales
                if item != placeholder:
                    bought_in_test.setdefault(user, set()).add(item)
        popular = sorted(recent_buyers, key=lambda i: (-len(recent_buyers[i]), i))[:5]
        users_before = {u for u, _ in before}
        seed = [u for u, got in bought_in_test.items() if u in users_before and len(got) >= 5]
        slots = [(u, i) for u in seed for i in popular]
        new = [(u, i) for u, i in slots if (u, i) not in before]
        hit = {(u, i) for u, i in slots if i in bought_in_test[u]}
        assert 0 < len(new) < len(slots) and hit & set(new)  # every rate is a real fraction
        row = next(r for r in result.rows if (r["model"], r["user_set"]) == ("popular", "seed"))
        assert row["revenue@5"] == pytest.approx(sum(spend.get(s, 0.0) for s in slots) / len(seed))
        assert row["new_share"] == pytest.approx(len(new) / len(slots))
        assert row["new_hit"] == pytest.approx(len(hit & set(new)) / len(new))
        assert row["repeat_hit"] == pytest.approx(len(hit - set(new)) / (len(slots) - len(new)))

    def test_copurchase_new_lists_only_new_items(self, result: BacktestResult) -> None:
        """The anchor's every slot is new (catches the bought items left in), and its new_hit
        is its hit rate; new_hit_diff is two-stage's new_hit minus the anchor's."""
        rows = {(r["model"], r["user_set"]): r for r in result.rows}
        anchor = rows[("copurchase_new", "all")]
        assert anchor["new_share"] == 1.0 and anchor["repeat_hit"] is None
        assert anchor["new_hit"] > 0
        assert result.lists["copurchase_new"].height > 0
        # One interval per NEW_HIT_PAIRS model: the main list and the new-items list (#26).
        assert [(d["model"], d["anchor"]) for d in result.new_hit_diff] == [
            ("two_stage", "copurchase_new"),
            ("two_stage_new", "copurchase_new"),
        ]
        for diff in result.new_hit_diff:
            assert diff["users"] == anchor["users"]
            model_new_hit = rows[(diff["model"], "all")]["new_hit"]
            assert diff["mean"] == pytest.approx(model_new_hit - anchor["new_hit"])
            assert diff["lo"] <= diff["mean"] <= diff["hi"]
        assert result.to_json()["new_hit_diff"] == result.new_hit_diff

    def test_two_stage_beats_popular_and_als(self, result: BacktestResult) -> None:
        # Synthetic users repeat their favourites: the learned model must use that.
        for user_set in USER_SETS:
            assert result.precision("two_stage", user_set) > result.precision("popular", user_set)
            assert result.precision("two_stage", user_set) > result.precision("als", user_set)

    def test_curves_and_json(self, result: BacktestResult) -> None:
        payload = result.to_json()
        assert len(payload["precision_curves"]["two_stage"]["all"]) == 10
        row = next(
            r for r in payload["rows"] if r["model"] == "two_stage" and r["user_set"] == "all"
        )
        assert payload["precision_curves"]["two_stage"]["all"][4] == pytest.approx(
            row["precision@5"]
        )
        assert payload["candidates"]["union"]["recall"] > 0
        assert payload["importances"]
        assert "stage-2 window" in payload["protocol"]

    def test_diff_is_a_paired_interval_per_baseline(self, result: BacktestResult) -> None:
        """Each interval is the bootstrap of the per-user P@5 differences counted by hand
        (users who bought in the test window and before it, in user id order), with the
        configured draws and seed. Catches pairing by row position, another seed or draw
        count, another user set, or the difference taken the other way round."""
        assert set(result.diff) == set(MODELS) - {"two_stage"}
        all_users = next(r["users"] for r in result.rows if r["user_set"] == "all")
        prep = prepare(dataset(), SETTINGS)
        w, placeholder = prep["windows"], SETTINGS.prefilter.placeholder_item
        before: set[int] = set()
        in_test: dict[int, set[int]] = {}
        for user, item, week in prep["tx"].select(C.USER, C.ITEM, C.WEEK).iter_rows():
            if week < w.target_end:
                before.add(user)
            elif week < w.test_end:
                bought = in_test.setdefault(user, set())
                if item != placeholder:
                    bought.add(item)
        users = sorted(u for u in in_test if u in before)
        assert len(users) == all_users

        def precision(model: str) -> np.ndarray:
            top = result.lists[model].filter(pl.col(C.RANK) <= 5)
            lists: dict[int, set[int]] = {}
            for user, item in top.select(C.USER, C.ITEM).iter_rows():
                lists.setdefault(user, set()).add(item)
            return np.array([len(lists.get(u, set()) & in_test[u]) / 5 for u in users])

        cfg = SETTINGS.evaluation
        for baseline, d in result.diff.items():
            diffs = precision("two_stage") - precision(baseline)
            expected = interval(diffs, cfg.bootstrap_draws, cfg.bootstrap_seed)
            assert d == pytest.approx({**expected, "users": all_users})
            assert d["mean"] == pytest.approx(
                result.precision("two_stage") - result.precision(baseline)
            )
            assert d["lo"] < d["hi"]  # the differences vary: not a degenerate interval
        assert result.to_json()["diff"] == result.diff

    def test_als_is_the_als_model_alone_issue_16(self, result: BacktestResult) -> None:
        # ALS's own top k over the whole catalogue: implicit's recommend, not the candidates.
        assert result.model is not None
        stage1_model = result.model.stage1_for_scoring
        als = result.lists["als"]
        some = als[C.USER].unique().sort().head(3).to_numpy()
        idx = stage1_model.users.to_idx(some)
        items, _ = stage1_model.als.recommend(  # type: ignore[attr-defined]
            idx,
            stage1_model.user_items[idx],
            N=SETTINGS.evaluation.curve_k,
            filter_already_liked_items=False,
            filter_items=np.flatnonzero(
                ~np.isin(np.arange(len(stage1_model.items)), stage1_model.candidate_items)
            ),
        )
        for row, user in enumerate(some):
            got = als.filter(pl.col(C.USER) == user).sort(C.RANK)[C.ITEM].to_list()
            assert got == stage1_model.items.to_ids(np.asarray(items[row])).tolist()

    def test_two_stage_new_lists_only_items_new_to_the_user_issue_26(
        self, result: BacktestResult
    ) -> None:
        """The new-items row scores the new-items list: never an item bought before the test
        window (stage-2 window included), and its P@5 is its hit rate on new purchases."""
        prep = prepare(dataset(), SETTINGS)
        w = prep["windows"]
        before = split.before_test(prep["tx"].lazy(), w).select(C.USER, C.ITEM).unique()
        new = result.lists["two_stage_new"]
        assert new.height > 0
        assert new.join(before.collect(), on=[C.USER, C.ITEM], how="semi").height == 0
        truth = split.test_window(prep["tx"].lazy(), w).select(C.USER, C.ITEM).unique().collect()
        users = next(r["users"] for r in result.rows if r["user_set"] == "all")
        hits = new.filter(pl.col(C.RANK) <= 5).join(truth, on=[C.USER, C.ITEM], how="semi")
        assert hits.height > 0
        assert result.precision("two_stage_new") == pytest.approx(hits.height / (5 * users))

    def test_deterministic_for_a_fixed_seed(self, result: BacktestResult) -> None:
        again = run_backtest(dataset(), SETTINGS)
        # Same models and rankings; float means may differ in the last bit (parallel sums).
        for a, b in zip(again.rows, result.rows, strict=True):
            assert (a["model"], a["user_set"], a["users"]) == (
                b["model"],
                b["user_set"],
                b["users"],
            )
            for name in ("precision@5", "recall@5", "map@5", "ndcg@5", "coverage"):
                assert a[name] == pytest.approx(b[name], rel=1e-12)
        assert again.importances.equals(result.importances)


def test_candidate_backtest() -> None:
    out = run_candidate_backtest(dataset(), SETTINGS)
    assert set(out) >= {"generators", "union"}
    assert 0 < out["union"]["recall"] <= 1
    assert out["union"]["mean_candidates"] <= SETTINGS.candidates.max_per_user


def test_seed_spread_by_hand() -> None:
    def run(p_all: float, p_seed: float) -> dict:
        return {
            "rows": [
                {"model": "two_stage", "user_set": "all", "precision@5": p_all},
                {"model": "two_stage", "user_set": "seed", "precision@5": p_seed},
            ]
        }

    spread = seed_spread([run(0.30, 0.40), run(0.32, 0.40), run(0.31, 0.43)])
    by_set = {r["user_set"]: r for r in spread}
    assert by_set["all"]["runs"] == 3
    assert by_set["all"]["mean"] == pytest.approx(0.31)
    assert (by_set["all"]["min"], by_set["all"]["max"]) == (0.30, 0.32)
    assert by_set["all"]["std"] == pytest.approx(0.01)  # sample std of 0.30, 0.31, 0.32
    assert by_set["seed"]["mean"] == pytest.approx(0.41)
    assert by_set["seed"]["std"] == pytest.approx(0.017320508)
    assert seed_spread([run(0.3, 0.4)])[0]["std"] == 0.0


def test_reseeded_moves_both_seeds_only() -> None:
    moved = reseeded(SETTINGS, 2)
    assert moved.candidates.als.seed == SETTINGS.candidates.als.seed + 2
    assert moved.ranker.seed == SETTINGS.ranker.seed + 2
    assert moved.candidates.als.factors == SETTINGS.candidates.als.factors
    assert moved.ranker.n_estimators == SETTINGS.ranker.n_estimators
    assert reseeded(SETTINGS, 0) == SETTINGS


def test_seeded_backtest_keeps_the_configured_run_first(result: BacktestResult) -> None:
    seeded = run_seeded_backtest(dataset(), SETTINGS, 2)
    assert [(r["als_seed"], r["ranker_seed"]) for r in seeded.seed_runs] == [
        (SETTINGS.candidates.als.seed, SETTINGS.ranker.seed),
        (SETTINGS.candidates.als.seed + 1, SETTINGS.ranker.seed + 1),
    ]
    # The main rows are the configured seeds' run, the same as a plain backtest.
    assert seeded.precision() == pytest.approx(result.precision(), rel=1e-12)
    assert seeded.seed_runs[0]["rows"] == seeded.rows
    # The second run is a different model: its ranker importances or rows differ.
    assert seeded.seed_runs[1]["rows"] != seeded.rows
    payload = seeded.to_json()
    two_stage_all = next(
        r for r in payload["seed_spread"] if (r["model"], r["user_set"]) == ("two_stage", "all")
    )
    values = [
        next(
            r["precision@5"]
            for r in run["rows"]
            if (r["model"], r["user_set"]) == ("two_stage", "all")
        )
        for run in seeded.seed_runs
    ]
    assert two_stage_all["min"] == min(values) and two_stage_all["max"] == max(values)
    assert "seed_runs" not in result.to_json()


def poisoned(ds: Dataset, from_week: int) -> Dataset:
    """``ds`` with every purchase at or after ``from_week`` changed for the same users.

    Items are reversed (the same users buy other items, 10x the quantity) and new users who
    never bought before appear: what a model that reads those rows would notice.
    """
    tx = ds.transactions.collect()
    late = tx.filter(pl.col(C.WEEK) >= from_week)
    changed = late.with_columns(
        late[C.ITEM].reverse().alias(C.ITEM), (pl.col(C.QTY) * 10).alias(C.QTY)
    )
    strangers = late.head(500).with_columns((pl.col(C.USER) + 10_000_000).alias(C.USER))
    rows = pl.concat([tx.filter(pl.col(C.WEEK) < from_week), changed, strangers])
    return Dataset(rows.lazy(), ds.items, ds.users, "poisoned")


@pytest.fixture(scope="module")
def two_origins() -> OriginsResult:
    return run_origins(dataset(), SETTINGS, 2)


class TestOrigins:
    def test_test_windows_are_four_weeks_apart(self, two_origins: OriginsResult) -> None:
        weeks = [holdout_weeks(r.windows) for r in two_origins.results]
        assert weeks == [[50, 53], [46, 49]]  # synthetic data spans weeks 1..53
        older = two_origins.results[1].windows
        assert (older.history_end, older.target_end) == (46 - 6, 46)  # same protocol, 4 back

    def test_json_keeps_rows_and_adds_origins(self, two_origins: OriginsResult) -> None:
        payload = two_origins.to_json()
        assert payload["rows"] == two_origins.newest.rows
        assert [o["test_weeks"] for o in payload["origins"]] == [[50, 53], [46, 49]]
        assert [o["role"] for o in payload["origins"]] == ["final test", "validation"]
        assert payload["origins"][1]["diff"] == two_origins.results[1].diff
        mean = {(r["model"], r["user_set"]): r for r in payload["mean_over_origins"]}
        got = mean[("two_stage", "all")]["precision@5"]
        assert got == pytest.approx(sum(r.precision("two_stage") for r in two_origins.results) / 2)

    @pytest.mark.parametrize("origin", [0, 1])
    def test_no_model_reads_its_test_window_or_later(
        self, two_origins: OriginsResult, origin: int
    ) -> None:
        # Leakage test (#16): poison every row from the origin's test window on. The user sets
        # and every model's lists must not move (only the truth does).
        kept = two_origins.results[origin]
        first_test_week, last_test_week = holdout_weeks(kept.windows)
        again = run_backtest(
            cut_after(poisoned(dataset(), first_test_week), last_test_week), SETTINGS
        )
        assert again.windows == kept.windows
        assert set(again.lists) == set(MODELS)
        for name in MODELS:
            assert_frame_equal(again.lists[name], kept.lists[name], check_row_order=False)

    def test_older_origin_reads_nothing_after_its_test_window(
        self, two_origins: OriginsResult
    ) -> None:
        older = two_origins.results[1]
        _, last_test_week = holdout_weeks(older.windows)
        again = run_origins(poisoned(dataset(), last_test_week + 1), SETTINGS, 2).results[1]
        assert [(r["model"], r["user_set"], r["users"]) for r in again.rows] == [
            (r["model"], r["user_set"], r["users"]) for r in older.rows
        ]
        for a, b in zip(again.rows, older.rows, strict=True):
            assert a["precision@5"] == pytest.approx(b["precision@5"], rel=1e-12)
        assert again.diff == older.diff
