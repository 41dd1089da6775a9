"""The new-items list (#26) through the real training on small synthetic data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_batch.data import columns as C
from recsys_batch.data import synthetic
from recsys_batch.model import split
from recsys_batch.model.model_data import ModelData, TrainedTwoStage
from recsys_batch.model.new_items import GENERATOR_REASONS, REASON
from recsys_batch.model.new_items_ranking import (
    FIRST_BUYERS,
    NEW_ITEMS,
    featured_new_items,
    first_buyer_items,
    new_item_recommendations,
    scored_with,
)
from recsys_batch.model.persist import load_model, save_model
from recsys_batch.model.prefilter import apply_catalogue, prefilter
from recsys_batch.model.ranking import Ranker
from recsys_batch.model.stage1_slice import for_users
from recsys_batch.model.two_stage import fit_serving_parts, train_two_stage, with_gated_ranker
from recsys_batch.run import shard_context
from tests.small import SMALL_SETTINGS as SETTINGS

K = SETTINGS.publish.new_items


@pytest.fixture(scope="module")
def data() -> ModelData:
    """200 synthetic users, catalogue from the weeks before the backtest's test window."""
    generated = synthetic.generate(200, 3)
    raw = generated.transactions.filter(pl.col(C.QTY) >= 0)
    lo, hi = split.week_range(raw.lazy())
    windows = split.backtest_windows(lo, hi, SETTINGS.split)
    catalogue = prefilter(
        split.before_test(raw.lazy(), windows), generated.items.lazy(), SETTINGS.prefilter
    ).catalogue.collect()
    tx = apply_catalogue(raw.lazy(), catalogue.lazy(), SETTINGS.prefilter).collect()
    before = split.before_test(tx.lazy(), windows).collect()
    return ModelData(
        before.lazy(), catalogue.lazy(), generated.items.lazy(), generated.users.lazy()
    )


@pytest.fixture(scope="module")
def model(data: ModelData) -> TrainedTwoStage:
    lo, hi = split.week_range(data.transactions)
    windows = split.production_windows(lo, hi, SETTINGS.split)
    return train_two_stage(data, windows, SETTINGS)


@pytest.fixture(scope="module")
def users(data: ModelData) -> pl.LazyFrame:
    known = data.transactions.select(C.USER).unique().sort(C.USER).head(60).collect()
    return pl.concat([known, pl.DataFrame({C.USER: [123456789]})]).lazy()


@pytest.fixture(scope="module")
def lists(model: TrainedTwoStage, data: ModelData, users: pl.LazyFrame) -> pl.DataFrame:
    return new_item_recommendations(model, data, users, SETTINGS)


def test_training_fits_a_ranker_of_first_purchases(model: TrainedTwoStage) -> None:
    ranker = model.new_items_ranker
    assert ranker is not None
    assert ranker is not model.ranker
    assert "copurchase_rank" in ranker.feature_names
    assert "category_score" in ranker.feature_names
    assert "if_first_recent" in ranker.feature_names
    assert "own_score" not in ranker.feature_names
    assert "new_items_ranker" in model.timings


def test_the_new_items_ranker_is_a_bag_of_its_own_size(model: TrainedTwoStage) -> None:
    """Mutation caught: ``new_items.n_models`` not passed to the fit (one model), or the
    main ranker's ``n_models`` used instead."""
    assert SETTINGS.new_items.n_models != SETTINGS.ranker.n_models
    assert model.new_items_ranker is not None
    assert len(model.new_items_ranker.members) == SETTINGS.new_items.n_models
    assert len(model.ranker.members) == SETTINGS.ranker.n_models


def test_lists_hold_only_never_bought_items_best_first(
    model: TrainedTwoStage, data: ModelData, users: pl.LazyFrame, lists: pl.DataFrame
) -> None:
    """Mutation caught: "bought" from stage 1's history only, the stage-2 window's purchases
    of an item proposed again (the scoring cut is the end of the data)."""
    assert lists.schema == NEW_ITEMS
    assert lists.group_by(C.USER).len()["len"].max() == K
    assert 123456789 in lists[C.USER].to_list()  # unknown users get the trending items
    bought = data.transactions.select(C.USER, C.ITEM).unique().collect()
    assert lists.join(bought, on=[C.USER, C.ITEM], how="semi").height == 0
    assert set(lists[REASON]) <= set(GENERATOR_REASONS.values())
    assert len(set(lists[REASON])) > 1
    ranks = lists.group_by(C.USER).agg(pl.col(C.RANK).sort())[C.RANK].to_list()
    assert all(r == list(range(1, len(r) + 1)) for r in ranks)


def test_rank_order_is_the_rankers_best_first(
    model: TrainedTwoStage, data: ModelData, users: pl.LazyFrame, lists: pl.DataFrame
) -> None:
    """A naive reference: every candidate scored by the new-items ranker, the k best per
    user by score (ties: lower item id). Mutation caught: ranking by the main ranker, by
    the candidates' union order, or ascending."""
    feats, _ = featured_new_items(
        model.stage1_for_scoring, data, users, model.windows.target_end, SETTINGS
    )
    assert model.new_items_ranker is not None
    scored = scored_with(model.new_items_ranker, feats.frame.collect())
    expected = (
        scored.sort([C.USER, C.SCORE, C.ITEM], descending=[False, True, False])
        .group_by(C.USER, maintain_order=True)
        .head(K)
        .select(C.USER, C.ITEM)
    )
    assert_frame_equal(lists.sort(C.USER, C.RANK).select(C.USER, C.ITEM), expected)


def test_save_load_keeps_the_new_items_ranker(
    model: TrainedTwoStage,
    data: ModelData,
    users: pl.LazyFrame,
    lists: pl.DataFrame,
    tmp_path: Path,
) -> None:
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.new_items_ranker is not None
    assert len(loaded.new_items_ranker.members) == SETTINGS.new_items.n_models
    assert_frame_equal(new_item_recommendations(loaded, data, users, SETTINGS), lists)


def test_main_ranker_when_own_ranker_is_off(
    model: TrainedTwoStage, data: ModelData, users: pl.LazyFrame, lists: pl.DataFrame
) -> None:
    off = SETTINGS.model_copy(
        update={"new_items": SETTINGS.new_items.model_copy(update={"own_ranker": False})}
    )
    main = new_item_recommendations(model, data, users, off)
    assert main.height == lists.height
    assert not main.equals(lists)


def test_a_shard_of_users_gets_the_same_lists(
    model: TrainedTwoStage, data: ModelData, users: pl.LazyFrame, lists: pl.DataFrame
) -> None:
    """What the nightly's shards would serve equals the all-at-once lists: a shard sees only
    its users' purchases (plus the reference row) and its users' slice of stage 1, the item
    families (item, side tables, first buyers) come from the driver over every user.
    Mutation caught: first buyers computed from the shard's purchases."""
    cut = model.windows.target_end
    tx = data.transactions.collect()
    some = users.collect()[C.USER].head(25)
    own = tx.filter(pl.col(C.USER).is_in(some.implode()))
    ref = shard_context.reference_rows(tx.lazy(), cut)
    shard = data.with_transactions(
        pl.concat([own, ref.select(own.columns).cast(own.schema)]).lazy()
    )
    fixed = {
        "item": shard_context.global_item_table([tx.lazy()], cut, SETTINGS),
        **shard_context.side_tables(data.items, data.users, SETTINGS),
        FIRST_BUYERS: first_buyer_items(
            [tx.lazy()], cut, SETTINGS.features.recent_weeks, SETTINGS.prefilter.placeholder_item
        ),
    }
    sliced = dataclasses.replace(
        model, stage1_for_scoring=for_users(model.stage1_for_scoring, some.to_numpy())
    )
    got = new_item_recommendations(
        sliced, shard, some.to_frame().lazy(), SETTINGS, fixed_tables=fixed
    )
    expected = lists.filter(pl.col(C.USER).is_in(some.implode()))
    assert got.height > 0
    assert_frame_equal(got, expected)


def test_the_new_items_ranker_that_scores_is_trained_on_the_newest_weeks(
    model: TrainedTwoStage, data: ModelData
) -> None:
    """The nightly scores the main list with the gate's ranker (``gate.publish_gated_ranker``),
    whose targets end 4 weeks before the scoring cut; the new-items ranker is trained on the
    newest stage-2 window instead, as the backtest trains the one it measures. Mutation
    caught: the gate's new-items ranker carried over, or one trained on the gate's windows."""
    lo, hi = split.week_range(data.transactions)
    gate = train_two_stage(data, split.backtest_windows(lo, hi, SETTINGS.split), SETTINGS)
    parts = fit_serving_parts(data, model.windows, SETTINGS)
    scoring = with_gated_ranker(gate, parts, model.windows)
    assert scoring.ranker is gate.ranker
    assert scoring.new_items_ranker is not None and gate.new_items_ranker is not None
    newest = model.new_items_ranker  # trained on the production windows, the same data
    assert newest is not None
    assert _booster_texts(scoring.new_items_ranker) == _booster_texts(newest)
    assert _booster_texts(scoring.new_items_ranker) != _booster_texts(gate.new_items_ranker)


def _booster_texts(ranker: Ranker) -> list[str]:
    return [booster.model_to_string(num_iteration=best) for booster, best in ranker.members]
