"""A shard's slice of stage 1 proposes what the whole model proposes for its users."""

from __future__ import annotations

import pickle

import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

from recsys_batch.data import columns as C
from recsys_batch.model.candidates import fit_stage1, generate_candidates
from recsys_batch.model.stage1_slice import for_users
from tests.unit.test_candidates import CFG, PLACEHOLDER, _transactions


def test_slice_gives_the_same_candidates_and_holds_only_its_users() -> None:
    tx = _transactions()
    catalogue = tx.select(C.ITEM).unique().filter(pl.col(C.ITEM) != PLACEHOLDER)
    model = fit_stage1(tx.lazy(), catalogue.lazy(), CFG, PLACEHOLDER)
    shard = np.array([2, 5, 11, 17, 404])  # 404 is unknown to the model: popular list
    users = pl.DataFrame({C.USER: shard}).lazy()

    sliced = for_users(model, shard)

    assert_frame_equal(
        generate_candidates(sliced, users, CFG).collect(),
        generate_candidates(model, users, CFG).collect(),
    )
    assert sliced.users.ids.tolist() == [2, 5, 11, 17]
    assert sliced.user_items.shape[0] == sliced.seeds.shape[0] == 4
    assert np.asarray(sliced.als.user_factors).shape[0] == 4
    assert set(sliced.own[C.USER].unique().to_list()) <= {2, 5, 11, 17}
    # The whole model is untouched, and the slice is what a task receives: smaller.
    assert len(model.users) == 16
    assert len(pickle.dumps(sliced)) < len(pickle.dumps(model))


def test_empty_slice_keeps_the_item_level_parts() -> None:
    tx = _transactions()
    catalogue = tx.select(C.ITEM).unique().filter(pl.col(C.ITEM) != PLACEHOLDER)
    model = fit_stage1(tx.lazy(), catalogue.lazy(), CFG, PLACEHOLDER)
    empty = for_users(model, np.empty(0, dtype=np.int64))
    assert len(empty.users) == 0
    assert empty.similarity.shape == model.similarity.shape
    assert empty.popular.equals(model.popular)
