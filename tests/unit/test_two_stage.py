"""Two-stage model on small synthetic data: leakage, contract, determinism (issue #4)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.data import columns as C
from recsys_batch.data import synthetic
from recsys_batch.model import split
from recsys_batch.model.model_data import ModelData
from recsys_batch.model.persist import load_model, save_model
from recsys_batch.model.prefilter import apply_catalogue, prefilter
from recsys_batch.model.training_set import training_frame
from recsys_batch.model.two_stage import popular_fallback, recommend, train_two_stage
from tests.small import SMALL_SETTINGS as SETTINGS


@pytest.fixture(scope="module")
def data() -> dict[str, object]:
    """200 synthetic users over 53 weeks, catalogue from the weeks before the test."""
    generated = synthetic.generate(200, 3)
    raw = generated.transactions.filter(pl.col(C.QTY) >= 0)
    lo, hi = split.week_range(raw.lazy())
    windows = split.backtest_windows(lo, hi, SETTINGS.split)
    catalogue = prefilter(
        split.before_test(raw.lazy(), windows), generated.items.lazy(), SETTINGS.prefilter
    ).catalogue.collect()
    tx = apply_catalogue(raw.lazy(), catalogue.lazy(), SETTINGS.prefilter).collect()
    return {
        "tx": tx,
        "items": generated.items,
        "users": generated.users,
        "catalogue": catalogue,
        "windows": windows,
    }


def model_data(d: dict) -> ModelData:
    return ModelData(d["tx"].lazy(), d["catalogue"].lazy(), d["items"].lazy(), d["users"].lazy())


def _train_frame(d: dict, tx: pl.DataFrame) -> pl.DataFrame:
    frame, _, _ = training_frame(
        ModelData(tx.lazy(), d["catalogue"].lazy(), d["items"].lazy(), d["users"].lazy()),
        d["windows"],
        SETTINGS,
    )
    return frame.sort(C.USER, C.ITEM).collect()


def _scramble(tx: pl.DataFrame, weeks: pl.Expr) -> pl.DataFrame:
    """Change every row in ``weeks``: other items, quantities, sales; drop half of them."""
    changed = tx.filter(weeks).with_columns(
        pl.col(C.ITEM).shuffle(seed=1),
        (pl.col(C.QTY) * 3),
        (pl.col(C.SALES) * 2.5),
    )
    changed = changed.filter(pl.int_range(pl.len()) % 2 == 0)
    return pl.concat([tx.filter(~weeks), changed])


class TestLeakage:
    def test_test_window_changes_no_training_feature_or_target(self, data: dict) -> None:
        w = data["windows"]
        base = _train_frame(data, data["tx"])
        scrambled = _train_frame(data, _scramble(data["tx"], pl.col(C.WEEK) >= w.target_end))
        assert base.height > 0
        assert_frame_equal(base, scrambled)

    def test_stage2_window_changes_no_training_feature(self, data: dict) -> None:
        w = data["windows"]
        in_stage2 = pl.col(C.WEEK).is_between(w.history_end, w.target_end, closed="left")
        base = _train_frame(data, data["tx"])
        scrambled = _train_frame(data, _scramble(data["tx"], in_stage2))
        # Targets may change (they come from that window); features may not. The candidate
        # users may differ (who shopped in the window), so compare the shared rows.
        keys = [C.USER, C.ITEM]
        shared = base.join(scrambled.select(keys), on=keys, how="semi").sort(keys)
        other = scrambled.join(base.select(keys), on=keys, how="semi").sort(keys)
        assert shared.height > 0
        assert_frame_equal(shared.drop(C.TARGET), other.drop(C.TARGET))
        assert not shared[C.TARGET].equals(other[C.TARGET])  # the guard can fail

    def test_history_changes_features(self, data: dict) -> None:
        w = data["windows"]
        base = _train_frame(data, data["tx"])
        scrambled = _train_frame(data, _scramble(data["tx"], pl.col(C.WEEK) == w.history_end - 1))
        assert not base.drop(C.TARGET).equals(scrambled.drop(C.TARGET))


class TestContract:
    @pytest.fixture(scope="class")
    def model(self, data: dict) -> object:
        return train_two_stage(model_data(data), data["windows"], SETTINGS)

    def _recommend(self, model: object, data: dict, user_ids: list[int]) -> pl.DataFrame:
        return recommend(
            model,  # type: ignore[arg-type]
            model_data(data),
            pl.LazyFrame({C.USER: user_ids}, schema={C.USER: pl.Int64}),
            SETTINGS,
        )

    def test_recommendations_shape(self, model: object, data: dict) -> None:
        users = data["tx"][C.USER].unique().sort().head(30).to_list() + [123456789]
        recs = self._recommend(model, data, users)
        assert recs.schema == C.RECOMMENDATIONS
        assert recs.group_by(C.USER).len()["len"].max() == SETTINGS.ranker.top_k
        assert set(recs[C.USER].unique().to_list()) == set(users)  # unknown user included
        assert recs.select(pl.struct(C.USER, C.ITEM).is_duplicated().any()).item() is False
        assert SETTINGS.prefilter.placeholder_item not in recs[C.ITEM].to_list()
        assert set(recs[C.ITEM].to_list()) <= set(data["catalogue"][C.ITEM].to_list())
        ranks = recs.group_by(C.USER).agg(pl.col(C.RANK).sort())[C.RANK].to_list()
        assert all(r == list(range(1, len(r) + 1)) for r in ranks)
        best_first = (
            recs.sort(C.USER, C.RANK)
            .group_by(C.USER, maintain_order=True)
            .agg((pl.col(C.SCORE).diff().drop_nulls() <= 0).all())
        )
        assert best_first[C.SCORE].all()

    def test_save_load_same_recommendations(
        self, model: object, data: dict, tmp_path: Path
    ) -> None:
        save_model(model, tmp_path)  # type: ignore[arg-type]
        loaded = load_model(tmp_path)
        users = data["tx"][C.USER].unique().sort().head(20).to_list()
        assert_frame_equal(
            self._recommend(model, data, users), self._recommend(loaded, data, users)
        )

    def test_importances_saved(self, model: object) -> None:
        imp = model.importances()  # type: ignore[attr-defined]
        assert imp.height == len(model.feature_names)  # type: ignore[attr-defined]
        assert imp["importance"].sum() > 0

    def test_popular_fallback(self, data: dict) -> None:
        top = popular_fallback(data["tx"].lazy(), data["catalogue"].lazy(), 5)
        assert len(top) == 5
        assert SETTINGS.prefilter.placeholder_item not in top
        buyers = (
            data["tx"]
            .filter(pl.col(C.ITEM).is_in(top))
            .group_by(C.ITEM)
            .agg(pl.col(C.USER).n_unique().alias("b"))
        )
        counts = dict(zip(buyers[C.ITEM], buyers["b"], strict=True))
        assert [counts[i] for i in top] == sorted((counts[i] for i in top), reverse=True)
