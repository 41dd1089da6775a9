"""Time split: windows never overlap and together cover every week."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_batch.config import SplitConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import DataError
from recsys_batch.model import split


def weeks_frame(first: int, last: int) -> pl.LazyFrame:
    weeks = list(range(first, last + 1))
    return pl.LazyFrame({C.WEEK: weeks}, schema={C.WEEK: pl.Int32})


def week_set(frame: pl.LazyFrame) -> set[int]:
    return set(frame.collect().get_column(C.WEEK).to_list())


configs = st.builds(
    SplitConfig,
    test_weeks=st.integers(1, 6),
    stage2_weeks=st.integers(1, 10),
    min_history_weeks=st.integers(1, 10),
)


@settings(deadline=None, max_examples=60)
@given(first=st.integers(-5, 10), span=st.integers(0, 70), cfg=configs)
def test_backtest_windows_partition_the_weeks(first: int, span: int, cfg: SplitConfig) -> None:
    last = first + span
    try:
        windows = split.backtest_windows(first, last, cfg)
    except DataError:
        assert last - cfg.test_weeks - cfg.stage2_weeks - first < cfg.min_history_weeks
        return
    tx = weeks_frame(first, last)
    parts = [
        week_set(split.history(tx, windows)),
        week_set(split.stage2_window(tx, windows)),
        week_set(split.test_window(tx, windows)),
    ]
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not a & b
    assert set().union(*parts) == set(range(first, last + 1))
    assert len(parts[0]) >= cfg.min_history_weeks
    assert len(parts[1]) == cfg.stage2_weeks
    # History before stage 2 before test.
    assert max(parts[0]) < min(parts[1]) <= max(parts[1]) < min(parts[2])
    assert week_set(split.before_test(tx, windows)) == parts[0] | parts[1]


@settings(deadline=None, max_examples=60)
@given(first=st.integers(0, 5), span=st.integers(0, 60), cfg=configs)
def test_production_windows_partition_the_weeks(first: int, span: int, cfg: SplitConfig) -> None:
    last = first + span
    try:
        windows = split.production_windows(first, last, cfg)
    except DataError:
        assert last + 1 - cfg.stage2_weeks - first < cfg.min_history_weeks
        return
    tx = weeks_frame(first, last)
    history = week_set(split.history(tx, windows))
    stage2 = week_set(split.stage2_window(tx, windows))
    assert not history & stage2
    assert history | stage2 == set(range(first, last + 1))
    assert max(stage2) == last
    assert not week_set(split.test_window(tx, windows))
    assert not windows.is_backtest


def test_bundled_backtest_windows() -> None:
    windows = split.backtest_windows(1, 53, SplitConfig())
    # Issue #2: the catalogue of a backtest is computed on weeks < 50.
    assert (windows.history_end, windows.target_end, windows.test_end) == (44, 50, 54)


def test_too_short_names_the_week_column_and_the_fix() -> None:
    with pytest.raises(DataError, match="history week") as info:
        split.backtest_windows(1, 12, SplitConfig())
    assert info.value.column == C.WEEK
    assert info.value.fix is not None
    assert "split.stage2_weeks" in info.value.fix


def test_week_range() -> None:
    assert split.week_range(weeks_frame(3, 9)) == (3, 9)
    with pytest.raises(DataError):
        split.week_range(weeks_frame(3, 9).filter(pl.lit(False)))
