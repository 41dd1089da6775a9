"""Candidate recall against hand-computed cases."""

from __future__ import annotations

import polars as pl
import pytest

from recsys_batch.data import columns as C
from recsys_batch.evaluation.candidate_metrics import candidate_recall


def _cands(rows: list[tuple[int, int, str | None]]) -> pl.LazyFrame:
    """(user, item, generator) rows -> a CANDIDATES frame with that generator's rank set."""
    data: dict[str, list[object]] = {C.USER: [r[0] for r in rows], C.ITEM: [r[1] for r in rows]}
    for g in C.GENERATORS:
        data[C.score_col(g)] = [1.0 if r[2] == g else None for r in rows]
        data[C.rank_col(g)] = [1 if r[2] == g else None for r in rows]
    data[C.N_GENERATORS] = [1] * len(rows)
    return pl.DataFrame(data, schema=C.CANDIDATES).lazy()


def _truth(rows: list[tuple[int, int]]) -> pl.LazyFrame:
    return pl.LazyFrame(rows, schema={C.USER: pl.Int64, C.ITEM: pl.Int64}, orient="row")


def test_hand_computed() -> None:
    # user 1 bought 1,2,3,4 (candidates hit 1,2 via als and 3 via own); user 2 bought 9 (miss);
    # user 3 is a candidate user but not evaluated (not in truth) and must be ignored.
    cands = _cands(
        [
            (1, 1, "als"),
            (1, 2, "als"),
            (1, 3, "own"),
            (1, 7, "popular"),
            (2, 8, "als"),
            (3, 1, "als"),
        ]
    )
    truth = _truth([(1, 1), (1, 2), (1, 3), (1, 4), (2, 9), (2, 9)])  # duplicate dropped
    out = candidate_recall(cands, truth)
    union = out["union"]
    assert union["recall"] == pytest.approx(3 / 5)
    assert union["recall_user_mean"] == pytest.approx((3 / 4 + 0) / 2)
    assert union["mean_candidates"] == pytest.approx(5 / 2)
    assert union["precision_at_5_upper_bound"] == pytest.approx((3 / 5 + 0) / 2)
    gens = out["generators"]
    assert gens["als"]["recall"] == pytest.approx(2 / 5)
    assert gens["als"]["mean_candidates"] == pytest.approx(3 / 2)
    assert gens["own"]["recall"] == pytest.approx(1 / 5)
    assert gens["popular"]["recall"] == 0.0
    assert gens["copurchase"] == {"recall": 0.0, "recall_user_mean": 0.0, "mean_candidates": 0.0}
    assert set(gens) == set(C.GENERATORS)


def test_upper_bound_caps_at_five() -> None:
    items = list(range(1, 9))
    cands = _cands([(1, i, "als") for i in items])
    truth = _truth([(1, i) for i in items])
    out = candidate_recall(cands, truth)
    assert out["union"]["recall"] == 1.0
    assert out["union"]["precision_at_5_upper_bound"] == 1.0


def test_user_without_candidates_counts_as_zero() -> None:
    cands = _cands([(1, 1, "own")])
    truth = _truth([(1, 1), (2, 5)])
    out = candidate_recall(cands, truth)
    assert out["union"]["recall"] == pytest.approx(0.5)
    assert out["union"]["mean_candidates"] == pytest.approx(0.5)


def test_upper_bound_over_the_same_users_as_precision_issue_16() -> None:
    # P@5 averages over every evaluated user, including user 2 who bought no catalogue item
    # in the test window (precision 0): the bound must average over the same two users.
    cands = _cands([(1, i, "own") for i in range(1, 6)] + [(2, 1, "own"), (3, 1, "own")])
    truth = _truth([(1, i) for i in range(1, 6)] + [(3, 1)])  # user 3 is not evaluated
    users = pl.LazyFrame({C.USER: [1, 2]}, schema={C.USER: pl.Int64})
    union = candidate_recall(cands, truth, users)["union"]
    assert union["precision_at_5_upper_bound"] == pytest.approx((1.0 + 0.0) / 2)
    assert union["recall"] == 1.0  # micro recall: user 2 has nothing to recall
    assert union["mean_candidates"] == pytest.approx(6 / 2)


@pytest.mark.slow
def test_bundled_backtest_union_recall_at_least_half() -> None:
    """Issue #3 acceptance: union recall >= 0.50 at <= 200 per user on the bundled data.

    Issue-#4 protocol: catalogue and stage 1 from the weeks before the test window, scored
    against the catalogue items each "all" user bought in the test window.
    """
    from recsys_batch.config import Settings  # noqa: PLC0415
    from recsys_batch.data.sources import load_dataset  # noqa: PLC0415
    from recsys_batch.evaluation.protocol import evaluation_users, prepare, test_truth  # noqa: PLC0415
    from recsys_batch.model import split  # noqa: PLC0415
    from recsys_batch.model.candidates import fit_stage1, generate_candidates  # noqa: PLC0415

    settings = Settings()
    settings = settings.model_copy(
        update={"candidates": settings.candidates.model_copy(update={"max_per_user": 200})}
    )
    prep = prepare(load_dataset(settings.data), settings)
    windows, tx = prep["windows"], prep["tx"].lazy()
    placeholder = settings.prefilter.placeholder_item
    truth = test_truth(tx, windows, placeholder).collect()
    users = evaluation_users(tx, truth.lazy(), windows)["all"].collect()
    model = fit_stage1(
        split.before_test(tx, windows), prep["catalogue"].lazy(), settings.candidates, placeholder
    )
    cands = generate_candidates(model, users.lazy(), settings.candidates).collect()
    out = candidate_recall(cands.lazy(), truth.lazy().join(users.lazy(), on=C.USER, how="semi"))
    assert cands.group_by(C.USER).len()["len"].max() <= settings.candidates.max_per_user
    assert placeholder not in cands[C.ITEM].to_list()
    assert out["union"]["recall"] >= 0.50
    assert out["union"]["recall"] > max(g["recall"] for g in out["generators"].values())
