"""The thread that fits the served model's other parts beside the gate (#26)."""

from __future__ import annotations

import threading

import pytest

from recsys_batch.errors import EmptyStageError
from recsys_batch.run import beside_gate


def test_the_fit_runs_on_its_own_thread_and_returns_its_result() -> None:
    """Mutation caught: ``start`` running the fit on the caller's thread."""
    caller = threading.current_thread().name
    future = beside_gate.start(lambda: threading.current_thread().name)
    name = future.result(timeout=10)
    assert name != caller
    assert name.startswith(beside_gate.THREAD_NAME)


def test_the_fit_s_error_comes_back_from_result() -> None:
    """Its own exception and exit code, not a wrapper (mutation: errors swallowed to None)."""

    def fails() -> int:
        raise EmptyStageError("no first purchase", fix="check the window")

    future = beside_gate.start(fails)
    with pytest.raises(EmptyStageError, match="no first purchase") as info:
        future.result(timeout=10)
    assert info.value.exit_code == 2


def test_settle_returns_only_once_the_fit_has_ended() -> None:
    """Mutation caught: ``settle`` returning at once (a refused run leaving a fit computing)."""
    release = threading.Event()
    ended = threading.Event()

    def fit() -> None:
        release.wait(timeout=30)
        ended.set()

    future = beside_gate.start(fit)
    threading.Timer(0.05, release.set).start()
    beside_gate.settle(future)
    assert ended.is_set() and future.done()


def test_settle_ignores_the_fit_s_error_and_no_fit() -> None:
    """A refused gate's error is the one raised: the fit's own is not (mutation: re-raised)."""

    def fails() -> None:
        raise ValueError("fit failed")

    future = beside_gate.start(fails)
    beside_gate.settle(future)
    assert isinstance(future.exception(), ValueError)
    beside_gate.settle(None)
