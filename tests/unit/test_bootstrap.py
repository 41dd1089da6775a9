"""The paired bootstrap interval against cases computed by hand (#16)."""

from __future__ import annotations

from math import comb

import numpy as np
import polars as pl
import pytest

from recsys_batch.data import columns as C
from recsys_batch.evaluation.bootstrap import interval, paired_differences, resampled_means


def test_two_users_by_hand() -> None:
    # Differences 0 and 0.4: a resample of 2 users has mean 0 (prob 1/4), 0.2 (1/2) or
    # 0.4 (1/4), so with 1,000 draws the 2.5th and 97.5th percentiles are 0 and 0.4.
    out = interval(np.array([0.0, 0.4]), draws=1000, seed=1)
    assert out == pytest.approx({"mean": 0.2, "lo": 0.0, "hi": 0.4})
    means = resampled_means(np.array([0.0, 0.4]), 1000, 1)
    assert set(np.round(means, 9)) == {0.0, 0.2, 0.4}
    assert np.mean(means == 0.2) == pytest.approx(0.5, abs=0.05)


def _binomial_quantile(n: int, p: float, q: float) -> int:
    """Smallest ``j`` with ``P(Binomial(n, p) <= j) >= q``."""
    cdf = 0.0
    for j in range(n + 1):
        cdf += comb(n, j) * p**j * (1 - p) ** (n - j)
        if cdf >= q:
            return j
    return n


@pytest.mark.parametrize(
    ("level", "lo", "hi"), [(0.95, 4 / 16, 12 / 16), (0.90, 5 / 16, 11 / 16)], ids=["95%", "90%"]
)
def test_interval_is_the_exact_percentiles_of_a_two_valued_sample(
    level: float, lo: float, hi: float
) -> None:
    """Eight differences of 1 and eight of 0: a resample's mean is exactly Binomial(16, 1/2)
    / 16, so the interval is known by construction. P(<= 3) = 0.0106 and P(<= 4) = 0.0384 put
    the 2.5th percentile at 4/16, P(<= 4) < 0.05 <= P(<= 5) = 0.105 the 5th at 5/16 (and
    symmetrically above). Every CDF step is at least 0.0116 from 0.025, 0.05, 0.95 and 0.975;
    with 20,000 draws the empirical CDF is within 0.0014 (one sd) of the exact one, so no
    seed moves a bound. Catches resampling without replacement (every mean 1/2), the wrong
    tail (``level`` or ``1 - level`` as the quantile) and a normal approximation (0.255,
    0.745)."""
    assert (lo, hi) == tuple(
        _binomial_quantile(16, 0.5, q) / 16 for q in ((1 - level) / 2, (1 + level) / 2)
    )
    diffs = np.array([1.0] * 8 + [0.0] * 8)
    out = interval(diffs, draws=20_000, seed=7, level=level)
    assert out == {"mean": 0.5, "lo": lo, "hi": hi}


def test_constant_difference_has_a_point_interval() -> None:
    assert interval(np.full(7, 0.2), draws=50, seed=0) == pytest.approx(
        {"mean": 0.2, "lo": 0.2, "hi": 0.2}
    )


def test_seeded_and_paired_by_user() -> None:
    # Rows arrive in different orders: the pairing is by user id, not by position.
    ref = pl.DataFrame({C.USER: [1, 2, 3], "p": [0.4, 0.2, 0.0]})
    base = pl.DataFrame({C.USER: [3, 1, 2], "p": [0.0, 0.2, 0.2]})
    per_user = {"two_stage": ref, "own": base}
    out = paired_differences(per_user, "p", "two_stage", draws=200, seed=5)
    assert set(out) == {"own"}
    assert out["own"]["users"] == 3
    assert out["own"]["mean"] == pytest.approx(0.2 / 3)  # differences 0.2, 0, 0
    assert 0.0 == out["own"]["lo"] <= out["own"]["mean"] <= out["own"]["hi"] == pytest.approx(0.2)
    assert paired_differences(per_user, "p", "two_stage", draws=200, seed=5) == out
