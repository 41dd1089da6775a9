"""Work of the nightly that runs on a thread while the quality gate's backtest runs.

The served model is the gate's ranker plus parts that do not read it
(:func:`~recsys_batch.model.two_stage.fit_serving_parts`: stage 1 refit on everyone and the
new-items ranker trained on the newest weeks). Each step of the batch keeps about 1.6 of 2
cores busy (the Python between polars, LightGBM and implicit calls runs on one), and those
libraries release the GIL while they compute, so the two fits together fill the cores the
backtest leaves idle. Only for inputs of at most ``scale.beside_gate_rows`` transactions:
beside the gate the driver's peak is the sum of both (13.6M lines: 10.5 GB against 7.7 GB,
and no faster: there each step fills both cores already), so larger inputs fit them after
the gate (``stages.start_serving_parts``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")

THREAD_NAME = "beside-gate"
"""Name prefix of the thread (in log records' ``threadName``)."""


def start(fit: Callable[[], T]) -> Future[T]:
    """Run ``fit`` on its own thread; its result or error comes back from ``.result()``."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
    try:
        return pool.submit(fit)
    finally:
        pool.shutdown(wait=False)  # the thread ends with ``fit``; nothing else is queued


def settle(future: Future[T] | None) -> None:
    """Wait until ``future`` has ended, whatever it raised (its error is the lesser one).

    For a run that fails while the fit runs (a refused gate, a bad input): it returns only
    when nothing of it computes any more, so the caller's error is the last thing it does.
    """
    if future is not None:
        wait([future])
