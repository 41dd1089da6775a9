"""LightGBM ranker: determinism, negative sampling, top-k, save/load (issue #4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.config import RankerConfig
from recsys_batch.data import columns as C
from recsys_batch.model.ranking import (
    fit_ranker,
    load_ranker,
    sample_negatives,
    save_ranker,
    score,
    top_k,
    validation_users,
)

CFG = RankerConfig(n_estimators=40, num_leaves=7, min_child_samples=5, threads=1, seed=7)


def training(seed: int = 0, n_users: int = 60, n_items: int = 20) -> pl.DataFrame:
    """Users buy an item when its 'signal' feature is high: learnable by construction."""
    rng = np.random.default_rng(seed)
    n = n_users * n_items
    signal = rng.random(n)
    noise = rng.random(n)
    target = (signal + 0.2 * rng.random(n) > 0.8).astype(np.int8)
    return pl.DataFrame(
        {
            C.USER: np.repeat(np.arange(n_users), n_items).astype(np.int64),
            C.ITEM: np.tile(np.arange(100, 100 + n_items), n_users).astype(np.int64),
            "signal": signal,
            "noise": noise,
            "cat_code": (np.arange(n) % 3).astype(np.int32),
            C.TARGET: target,
        }
    )


FEATURES = ("signal", "noise", "cat_code")


class TestFit:
    def test_learns_the_signal(self) -> None:
        ranker = fit_ranker(training().lazy(), FEATURES, ("cat_code",), CFG)
        imp = ranker.importances()
        assert imp["feature"][0] == "signal"
        scored = score(ranker, training(seed=1).lazy())
        test = training(seed=1)
        corr = np.corrcoef(scored[C.SCORE].to_numpy(), test["signal"].to_numpy())[0, 1]
        assert corr > 0.8

    def test_same_seed_same_model(self) -> None:
        a = score(fit_ranker(training().lazy(), FEATURES, (), CFG), training(seed=2).lazy())
        b = score(fit_ranker(training().lazy(), FEATURES, (), CFG), training(seed=2).lazy())
        assert_frame_equal(a, b)

    @pytest.mark.parametrize("objective", ["binary", "lambdarank", "rank_xendcg"])
    def test_objectives(self, objective: str) -> None:
        cfg = CFG.model_copy(update={"objective": objective})
        ranker = fit_ranker(training().lazy(), FEATURES, (), cfg)
        assert ranker.best_iteration >= 1

    def test_no_positive_raises(self) -> None:
        from recsys_batch.errors import EmptyStageError

        frame = training().with_columns(pl.lit(0, dtype=pl.Int8).alias(C.TARGET))
        with pytest.raises(EmptyStageError, match="no positive"):
            fit_ranker(frame.lazy(), FEATURES, (), CFG)


class TestHelpers:
    def test_sample_negatives_keeps_positives(self) -> None:
        frame = training()
        sampled = sample_negatives(frame, 3, seed=1)
        assert (
            sampled.filter(pl.col(C.TARGET) == 1).height
            == frame.filter(pl.col(C.TARGET) == 1).height
        )
        per_user = sampled.filter(pl.col(C.TARGET) == 0).group_by(C.USER).len()["len"]
        assert per_user.max() <= 3
        assert sample_negatives(frame, None, seed=1).height == frame.height

    def test_sample_negatives_keeps_graded_positives(self) -> None:
        # A label of 2 (bought on two days) is a positive, never a sampled-away negative.
        frame = training().with_columns(
            pl.when(pl.col(C.TARGET) == 1).then(2).otherwise(0).cast(pl.Int8).alias(C.TARGET)
        )
        sampled = sample_negatives(frame, 1, seed=1)
        assert (
            sampled.filter(pl.col(C.TARGET) == 2).height
            == frame.filter(pl.col(C.TARGET) == 2).height
        )
        assert sampled.filter(pl.col(C.TARGET) == 0).group_by(C.USER).len()["len"].max() <= 1

    def test_validation_users_deterministic_share(self) -> None:
        users = pl.Series(C.USER, list(range(100)) * 2)
        a = validation_users(users, 0.2, seed=3)
        assert len(a) == 20
        assert a.to_list() == validation_users(users, 0.2, seed=3).to_list()

    def test_top_k_order_and_ties(self) -> None:
        scored = pl.LazyFrame(
            {
                C.USER: [1, 1, 1, 2],
                C.ITEM: [12, 10, 11, 10],
                C.SCORE: [0.5, 0.9, 0.5, 0.1],
            },
            schema={C.USER: pl.Int64, C.ITEM: pl.Int64, C.SCORE: pl.Float32},
        )
        out = top_k(scored, 2).collect()
        assert out.schema == C.RECOMMENDATIONS
        assert out.filter(pl.col(C.USER) == 1)[C.ITEM].to_list() == [10, 11]  # tie -> lower id
        assert out.filter(pl.col(C.USER) == 2)[C.RANK].to_list() == [1]


def test_save_load_roundtrip(tmp_path: Path) -> None:
    ranker = fit_ranker(training().lazy(), FEATURES, ("cat_code",), CFG)
    save_ranker(ranker, tmp_path)
    assert (tmp_path / "ranker.txt").read_text().startswith("tree")
    loaded = load_ranker(tmp_path)
    assert loaded.feature_names == FEATURES
    assert_frame_equal(score(ranker, training(3).lazy()), score(loaded, training(3).lazy()))


class TestLabelsAndBagging:
    def graded(self) -> pl.DataFrame:
        frame = training()
        # Grade 2 where the signal is very high: a graded label the ranker can use.
        return frame.with_columns(
            (pl.col(C.TARGET) + (pl.col("signal") > 0.95).cast(pl.Int8)).alias(C.TARGET)
        )

    def test_binary_clips_graded_label(self) -> None:
        from recsys_batch.model.ranking import training_label  # noqa: PLC0415

        target = pl.Series([0, 1, 2, 3], dtype=pl.Int8)
        assert training_label(target, CFG.model_copy(update={"objective": "binary"})).tolist() == [
            0,
            1,
            1,
            1,
        ]
        lrk = CFG.model_copy(update={"objective": "lambdarank", "max_label": 2})
        assert training_label(target, lrk).tolist() == [0, 1, 2, 2]

    @pytest.mark.parametrize("objective", ["lambdarank", "rank_xendcg"])
    def test_graded_ranking_objective_learns_the_signal(self, objective: str) -> None:
        cfg = CFG.model_copy(update={"objective": objective, "max_label": 2})
        ranker = fit_ranker(self.graded().lazy(), FEATURES, (), cfg)
        scored = score(ranker, training(seed=1).lazy())
        corr = np.corrcoef(scored[C.SCORE].to_numpy(), training(seed=1)["signal"].to_numpy())
        assert corr[0, 1] > 0.8

    def test_bagged_ensemble_is_the_mean_of_its_members(self) -> None:
        cfg = CFG.model_copy(update={"n_models": 3})
        ranker = fit_ranker(training().lazy(), FEATURES, (), cfg)
        assert len(ranker.members) == 3
        test = training(seed=2)
        got = score(ranker, test.lazy())[C.SCORE].to_numpy()
        matrix = test.select(pl.col(f).cast(pl.Float32) for f in FEATURES).to_numpy()
        members = [b.predict(matrix, num_iteration=it) for b, it in ranker.members]
        np.testing.assert_allclose(got, np.mean(members, axis=0), rtol=1e-5)
        # Members differ (different seeds), so the ensemble is not one model three times.
        assert not np.allclose(members[0], members[1])

    def test_bagged_save_load_roundtrip(self, tmp_path: Path) -> None:
        ranker = fit_ranker(training().lazy(), FEATURES, (), CFG.model_copy(update={"n_models": 2}))
        save_ranker(ranker, tmp_path)
        loaded = load_ranker(tmp_path)
        assert len(loaded.members) == 2
        assert_frame_equal(
            score(ranker, training(seed=3).lazy()), score(loaded, training(seed=3).lazy())
        )
