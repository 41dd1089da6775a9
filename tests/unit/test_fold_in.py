"""Stage 1 fit on a sample of users, the others folded in (issue #28)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from polars.testing import assert_frame_equal

from recsys_batch.config import Settings, load_settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import load_dataset
from recsys_batch.data.user_hash import sample_users
from recsys_batch.errors import ConfigError
from recsys_batch.model import featured, split, two_stage
from recsys_batch.model.candidates import Stage1Model, fit_stage1, generate_candidates
from recsys_batch.model.fold_in import als_user_factors
from recsys_batch.model.prefilter import apply_catalogue, prefilter
from recsys_batch.model.stage1_slice import with_folded_in
from tests.unit.test_candidates import CFG, PLACEHOLDER, _transactions

EPS32 = float(np.finfo(np.float32).eps)
SAMPLE = 60
"""Users stage 1 is fit on, of the synthetic data's 150."""


def _solve_bound(als: Any, row: sp.csr_matrix, x: np.ndarray) -> float:
    """How far two float32 solves of one user's system may differ.

    Each of them forms ``A`` and ``b`` by summing ``nnz + factors`` float32 terms and solves
    with a backward-stable factorisation, so its error is at most about ``(nnz + factors) *
    eps * cond(A) * |x|``; two of them differ by at most twice that.
    """
    y = np.asarray(als.item_factors, dtype=np.float64)
    conf = row.data * float(als.alpha)
    picked = y[row.indices]
    a = y.T @ y + als.regularization * np.eye(y.shape[1])
    a += picked.T @ ((np.abs(conf) - 1)[:, None] * picked)
    terms = row.nnz + y.shape[1]
    return 2 * terms * EPS32 * float(np.linalg.cond(a)) * float(np.linalg.norm(x))


@pytest.fixture(scope="module")
def tiny() -> Stage1Model:
    """Stage 1 on the two-group data, confidence scaled (alpha 4) as the fit scales it."""
    tx = _transactions()
    catalogue = tx.select(C.ITEM).unique().filter(pl.col(C.ITEM) != PLACEHOLDER)
    cfg = CFG.model_copy(update={"als": CFG.als.model_copy(update={"alpha": 4.0})})
    return fit_stage1(tx.lazy(), catalogue.lazy(), cfg, PLACEHOLDER)


class TestSolve:
    def test_equals_implicit_recalculate_user(self, tiny: Stage1Model) -> None:
        """Every user's fold-in factors are implicit's ``recalculate_user`` of their row,
        to float32 precision; a dislike (negative value) and an empty row included.
        Catches: alpha or the regularisation left out, ``C_u`` instead of ``C_u - I``, a
        dislike's confidence not made positive, a wrong item gathered."""
        rows = sp.vstack(
            [
                tiny.user_items,
                sp.csr_matrix(([2.0, -3.0], ([0, 0], [0, 5])), shape=(1, len(tiny.items))),
                sp.csr_matrix((1, len(tiny.items))),
            ],
            format="csr",
            dtype=np.float32,
        )
        ours = als_user_factors(tiny.als, rows)
        theirs = tiny.als.recalculate_user(np.arange(rows.shape[0]), rows)  # type: ignore[attr-defined]
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        for user in range(rows.shape[0] - 1):
            diff = float(np.linalg.norm(ours[user] - theirs[user]))
            assert diff <= _solve_bound(tiny.als, rows[user], theirs[user]), user
        assert not ours[-1].any() and not theirs[-1].any()  # implicit's zeros for no items
        assert np.abs(theirs[:-1]).max() > 0.1  # the comparison is not of zeros

    def test_a_users_factors_do_not_depend_on_the_others(self, tiny: Stage1Model) -> None:
        """A shard and the whole data give a user the same bits (batches group users by
        padded width only). Catches: padding to the longest row of a batch."""
        every = als_user_factors(tiny.als, tiny.user_items)
        some = np.array([1, 4, 9, 12])
        some_only = als_user_factors(tiny.als, tiny.user_items[some])
        np.testing.assert_array_equal(some_only, every[some])


@dataclasses.dataclass
class Synthetic:
    settings: Settings
    data: two_stage.ModelData
    windows: split.Windows
    users: np.ndarray
    full: Stage1Model
    sampled: Stage1Model


def _settings(**scale: Any) -> Settings:
    return load_settings(
        data={"source": "synthetic", "synthetic_users": 150, "synthetic_seed": 7},
        prefilter={"min_user_share": 0.01},
        candidates={"als": {"iterations": 3, "factors": 16, "threads": 1, "alpha": 2.0}},
        scale=scale,
    )


@pytest.fixture(scope="module")
def synthetic() -> Synthetic:
    """150 synthetic users: stage 1 fit on all of them, and on a sample of 60."""
    settings = _settings(stage1_users=None)
    dataset = load_dataset(settings.data)
    tx = dataset.transactions.collect()
    catalogue = prefilter(tx.lazy(), dataset.items, settings.prefilter).catalogue.collect()
    tx_cat = apply_catalogue(tx.lazy(), catalogue.lazy(), settings.prefilter).collect()
    windows = split.production_windows(*split.week_range(tx.lazy()), settings.split)
    data = two_stage.ModelData(tx_cat.lazy(), catalogue.lazy())
    users = tx[C.USER].unique().sort().to_numpy()
    sampled = two_stage.fit_scoring_stage1(data, windows, _settings(stage1_users=SAMPLE))
    full = two_stage.fit_scoring_stage1(data, windows, settings)
    return Synthetic(settings, data, windows, users, full, sampled)


def _folded(s: Synthetic, model: Stage1Model | None = None) -> Stage1Model:
    """``model`` (the sampled one) knowing every user, as scoring folds them in."""
    catalogue = featured.catalogue_ids(s.data.catalogue, s.settings.prefilter.placeholder_item)
    tx = split.before_test(s.data.transactions, s.windows)
    base = model if model is not None else s.sampled
    return with_folded_in(base, s.users, tx, s.windows.target_end, catalogue, s.settings.candidates)


def _row(model: Stage1Model, matrix: sp.csr_matrix, user: int) -> dict[int, float]:
    """``{item_id: value}`` of a user's row of a per-user matrix of ``model``."""
    row = matrix[int(model.users.to_idx(np.array([user]))[0])]
    return dict(zip(model.items.to_ids(row.indices).tolist(), row.data.tolist(), strict=True))


class TestSample:
    def test_the_fit_sees_only_the_sample(self, synthetic: Synthetic) -> None:
        """A stable hash sample of about 60 of the 150 users (the same one every night)."""
        n = len(synthetic.sampled.users)
        assert 30 < n < 100 and len(synthetic.full.users) == 150
        again = two_stage.fit_scoring_stage1(
            synthetic.data, synthetic.windows, _settings(stage1_users=SAMPLE)
        )
        np.testing.assert_array_equal(again.users.ids, synthetic.sampled.users.ids)

    def test_a_sampled_users_factors_equal_a_fit_on_the_sample_alone(
        self, synthetic: Synthetic
    ) -> None:
        """The sample's users keep the factors of a fit on their rows only, also once the
        others are folded in. Catches: fitting everyone and slicing, refolding the sampled
        users at scoring, the item factors moved by the folded users."""
        s = synthetic
        tx = split.before_test(s.data.transactions, s.windows)
        alone = fit_stage1(
            sample_users(tx, len(s.users), SAMPLE),
            s.data.catalogue,
            s.settings.candidates,
            s.settings.prefilter.placeholder_item,
        )
        np.testing.assert_array_equal(s.sampled.users.ids, alone.users.ids)
        np.testing.assert_array_equal(s.sampled.als.user_factors, alone.als.user_factors)  # type: ignore[attr-defined]
        folded = _folded(s)
        idx = folded.users.to_idx(alone.users.ids)
        np.testing.assert_array_equal(folded.als.user_factors[idx], alone.als.user_factors)  # type: ignore[attr-defined]
        np.testing.assert_array_equal(folded.als.item_factors, alone.als.item_factors)  # type: ignore[attr-defined]

    def test_folded_users_parts_equal_those_of_a_fit_that_saw_them(
        self, synthetic: Synthetic
    ) -> None:
        """Own purchases, seeds and the interaction row of a folded user are the full fit's
        (on the items the sample knows), and their factors are implicit's
        ``recalculate_user`` of that row. Catches: the wrong cut day (own scores), another
        user's lines, misaligned item columns, a fold-in without alpha."""
        s = synthetic
        folded = _folded(s)
        outside = np.setdiff1d(s.users, s.sampled.users.ids)
        assert outside.size > 40 and len(folded.users) == 150
        known = set(s.sampled.items.ids.tolist())
        for user in outside[:10].tolist():
            own = [m.own.filter(pl.col(C.USER) == user).sort(C.ITEM) for m in (folded, s.full)]
            assert_frame_equal(own[0], own[1])
            for part in ("user_items", "seeds"):
                expected = {
                    i: v for i, v in _row(s.full, getattr(s.full, part), user).items() if i in known
                }
                assert _row(folded, getattr(folded, part), user) == expected, part
            row = folded.user_items[int(folded.users.to_idx(np.array([user]))[0])]
            theirs = s.sampled.als.recalculate_user(0, row)  # type: ignore[attr-defined]
            ours = folded.als.user_factors[folded.users.to_idx(np.array([user]))[0]]  # type: ignore[attr-defined]
            assert np.linalg.norm(ours - theirs) <= _solve_bound(s.sampled.als, row, theirs)

    def test_folded_users_get_als_and_copurchase_candidates(self, synthetic: Synthetic) -> None:
        """Folded users get ALS, own (the full fit's) and co-purchase candidates; without
        the fold-in they would get the popular list only."""
        s = synthetic
        outside = np.setdiff1d(s.users, s.sampled.users.ids)[:20]
        users = pl.DataFrame({C.USER: outside}).lazy()
        cands = generate_candidates(_folded(s), users, s.settings.candidates).collect()
        full = generate_candidates(s.full, users, s.settings.candidates).collect()

        def proposed(frame: pl.DataFrame, gen: str) -> pl.DataFrame:
            return frame.filter(pl.col(C.rank_col(gen)).is_not_null()).select(C.USER, C.ITEM)

        assert proposed(cands, "als")[C.USER].n_unique() == outside.size
        assert_frame_equal(proposed(cands, "own"), proposed(full, "own"), check_row_order=False)
        # The co-purchase neighbours come from the sample's baskets (fewer here than a
        # fit on everyone has), the seeds from the user's own.
        assert proposed(cands, "copurchase")[C.USER].n_unique() > outside.size // 2
        unknown = generate_candidates(s.sampled, users, s.settings.candidates).collect()
        assert proposed(unknown, "als").is_empty() and proposed(unknown, "own").is_empty()

    def test_users_without_purchases_are_not_folded_in(self, synthetic: Synthetic) -> None:
        """Known users and users with no line keep the model as it is (no copy)."""
        s = synthetic
        catalogue = np.array([1], dtype=np.int64)
        tx = s.data.transactions
        ids = np.append(s.sampled.users.ids, -5)
        cfg = s.settings.candidates
        assert with_folded_in(s.sampled, ids, tx, s.windows.target_end, catalogue, cfg) is s.sampled

    def test_fold_in_uses_no_purchase_of_the_cut_week_or_later(self, synthetic: Synthetic) -> None:
        """Point in time: lines from ``as_of_week`` on change nothing. Catches: the fold-in
        reading the shard's lines without the week filter."""
        s = synthetic
        tx = split.before_test(s.data.transactions, s.windows)
        later = tx.filter(pl.col(C.WEEK) == s.windows.target_end - 1).with_columns(
            pl.col(C.WEEK) + 1, pl.col(C.DAY) + 7
        )
        catalogue = featured.catalogue_ids(s.data.catalogue, s.settings.prefilter.placeholder_item)
        cfg, cut = s.settings.candidates, s.windows.target_end
        plain = with_folded_in(s.sampled, s.users, tx, cut, catalogue, cfg)
        leaky = with_folded_in(s.sampled, s.users, pl.concat([tx, later]), cut, catalogue, cfg)
        np.testing.assert_array_equal(plain.als.user_factors, leaky.als.user_factors)  # type: ignore[attr-defined]
        assert_frame_equal(plain.own.sort(C.USER, C.ITEM), leaky.own.sort(C.USER, C.ITEM))

    def test_nothing_changes_when_the_sample_is_everyone(self, synthetic: Synthetic) -> None:
        """``stage1_users`` above the users fits exactly what no cap fits. Catches: the
        newest day or week taken from other lines, a sample drawn when none is needed."""
        s = synthetic
        capped = two_stage.fit_scoring_stage1(s.data, s.windows, _settings(stage1_users=150))
        np.testing.assert_array_equal(capped.als.user_factors, s.full.als.user_factors)  # type: ignore[attr-defined]
        assert capped.cut_day == s.full.cut_day
        assert_frame_equal(capped.own, s.full.own, check_row_order=False)
        assert_frame_equal(capped.trend, s.full.trend)
        assert _folded(s, s.full) is s.full

    def test_bm25_cannot_be_folded_in(self, synthetic: Synthetic) -> None:
        """BM25 weighs a row with every user's statistics: exit 2 with the fix, not a
        silently different matrix."""
        settings = _settings(stage1_users=SAMPLE).model_copy(
            update={
                "candidates": synthetic.settings.candidates.model_copy(
                    update={
                        "als": synthetic.settings.candidates.als.model_copy(
                            update={"weighting": "bm25"}
                        )
                    }
                )
            }
        )
        with pytest.raises(ConfigError, match="weighting = none"):
            two_stage.fit_scoring_stage1(synthetic.data, synthetic.windows, settings)
