"""Week windows of a time split: old purchases | stage-2 window | test window.

Backtest (``recsys evaluate``, the quality gate), W = newest week::

    history  = week <  W - test_weeks - stage2_weeks      (stage-1 fit, features)
    stage 2  = W - test_weeks - stage2_weeks <= week < W - test_weeks   (ranker targets)
    test     = week >= W - test_weeks                      (holdout, never seen in training)

Production (``recsys nightly-batch``): the stage-2 window is the last ``stage2_weeks`` weeks
and there is no test window; scoring then uses every week.

Only week arithmetic lives here, so that ``validation`` can check at load time that the data
covers the windows; :mod:`recsys_batch.model.split` cuts frames along them.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys_batch.config import SplitConfig
from recsys_batch.data import columns as C
from recsys_batch.errors import DataError


@dataclass(frozen=True)
class Windows:
    """Week boundaries; each window is half-open ``[start, end)``."""

    first_week: int
    history_end: int
    """Stage-1 history is ``week < history_end``; the stage-2 window starts here."""
    target_end: int
    """The stage-2 (target) window is ``history_end <= week < target_end``."""
    test_end: int | None
    """Backtest only: the test window is ``target_end <= week < test_end``."""

    @property
    def is_backtest(self) -> bool:
        """True when there is a test window."""
        return self.test_end is not None


def backtest_windows(first_week: int, last_week: int, cfg: SplitConfig) -> Windows:
    """Backtest windows: test = week >= W - test_weeks."""
    target_end = last_week - cfg.test_weeks
    windows = Windows(
        first_week=first_week,
        history_end=target_end - cfg.stage2_weeks,
        target_end=target_end,
        test_end=last_week + 1,
    )
    _check_history(windows, cfg)
    return windows


def production_windows(first_week: int, last_week: int, cfg: SplitConfig) -> Windows:
    """Production windows: the stage-2 window is the last ``stage2_weeks`` weeks."""
    target_end = last_week + 1
    windows = Windows(
        first_week=first_week,
        history_end=target_end - cfg.stage2_weeks,
        target_end=target_end,
        test_end=None,
    )
    _check_history(windows, cfg)
    return windows


def _check_history(windows: Windows, cfg: SplitConfig) -> None:
    history_weeks = windows.history_end - windows.first_week
    last_week = (windows.test_end or windows.target_end) - 1
    if history_weeks < cfg.min_history_weeks:
        msg = (
            f"the data covers weeks {windows.first_week}..{last_week}, "
            f"which leaves {history_weeks} history week(s) before the stage-2 window; "
            f"at least {cfg.min_history_weeks} are needed"
        )
        raise DataError(
            msg,
            column=C.WEEK,
            fix="provide more weeks of transactions, or lower split.stage2_weeks / "
            "split.test_weeks / split.min_history_weeks in the config",
        )
