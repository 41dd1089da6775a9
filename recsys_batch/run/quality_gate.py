"""The quality gate: the backtest's metric must reach a floor and hold against the live version.

The gate runs the backtest of ``recsys evaluate`` (``recsys_batch.evaluation.backtest``) on
the run's data and reads the ``gate.metric`` of the two-stage model for ``gate.user_set``
users. A model below ``gate.min_precision_at_5``, or more than ``gate.max_relative_drop``
below the metric recorded by the live version, is refused (exit 3) and nothing is published.
When the live version recorded no such metric (it was published by a ``--no-gate`` night),
the relative check cannot run: the gate logs a WARNING and records
``"relative_check": "skipped: the live version has no measured <metric>"`` (#16).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from recsys_batch.config import Settings
from recsys_batch.data.sources import Dataset
from recsys_batch.errors import QualityGateError, RecsysError
from recsys_batch.publish import status, store

log = logging.getLogger(__name__)

GATE_MODEL = "two_stage"
LIVE_VERSION = "live_version"
"""Key of :func:`live_metrics`'s answer naming the live version (absent: none is live)."""


@dataclass
class GateOutcome:
    """What the gate's backtest measured, and the model it measured."""

    metrics: dict[str, Any]
    """The two-stage row of ``gate.user_set`` users: ``{"precision@5": float, ...}``."""
    model: Any
    """The backtest's ``TrainedTwoStage``; its ranker scores when ``gate.publish_gated_ranker``."""


def backtest_outcome(
    dataset: Dataset, settings: Settings, forward_plans: bool | None = None
) -> GateOutcome:
    """Run the backtest and pick the two-stage row of ``gate.user_set`` users.

    ``forward_plans``: the run's decision on the forward plan features (the gate measures
    the model that is served); None: decided from the calendar, as ``recsys evaluate``.
    """
    from recsys_batch.evaluation import backtest  # noqa: PLC0415 - heavy (lightgbm, implicit)

    # The gate measures the main list. The new-items ranker that serves is trained on the
    # newest weeks (``two_stage.with_gated_ranker``), so the gate's backtest fits none.
    main_list_only = settings.model_copy(
        update={"publish": settings.publish.model_copy(update={"new_items": 0})}
    )
    result = backtest.run_backtest(
        dataset, main_list_only, baselines=False, forward_plans=forward_plans
    )
    for row in result.rows:
        if row.get("model") == GATE_MODEL and row.get("user_set") == settings.gate.user_set:
            metrics = {k: v for k, v in row.items() if k not in {"model", "user_set"}}
            return GateOutcome(metrics, result.model)
    msg = (
        f"the backtest returned no {GATE_MODEL}/{settings.gate.user_set} row; "
        "cannot apply the quality gate"
    )
    raise QualityGateError(msg)


def live_metrics(client: store.Client | None, settings: Settings) -> dict[str, Any]:
    """The metrics the live version recorded and its name under ``LIVE_VERSION``.

    ``{}`` before the first publish or without Redis; ``{LIVE_VERSION: v}`` alone when the
    live version recorded no metric (a ``--no-gate`` night).
    """
    if client is None:
        return {}
    live = status.live_version(client, settings.redis)
    if not live:
        return {}
    return {**status.version_info(client, live, settings.redis).metrics, LIVE_VERSION: live}


def check_gate(metrics: dict[str, Any], live: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Refuse a model below the floor or too far below the live version.

    ``live`` is :func:`live_metrics`'s answer: {} when no version is live.

    Returns
    -------
    dict
        The decision, recorded in the manifest: metric, value, floor, live value, threshold
        and ``relative_check`` (``passed`` or why it was skipped).

    Raises
    ------
    QualityGateError
        Exit code 3; nothing is published.
    """
    cfg = settings.gate
    value = metrics.get(cfg.metric)
    if not isinstance(value, int | float):
        msg = f"the backtest reported no {cfg.metric}; cannot apply the quality gate"
        raise QualityGateError(msg)
    live_value = live.get(cfg.metric)
    decision: dict[str, Any] = {
        "metric": cfg.metric,
        "value": value,
        "floor": cfg.min_precision_at_5,
        "live": live_value,
        "max_relative_drop": cfg.max_relative_drop,
    }
    if value < cfg.min_precision_at_5:
        msg = (
            f"quality gate refused to publish: {cfg.metric} {value:.4f} is below the floor "
            f"{cfg.min_precision_at_5:.4f} (gate.min_precision_at_5); the live version keeps "
            "serving"
        )
        raise QualityGateError(msg)
    if not isinstance(live_value, int | float) or live_value <= 0:
        decision["relative_check"] = _skipped_relative_check(live, live_value, cfg.metric)
        if not isinstance(live_value, int | float):
            decision["live"] = None
    else:
        threshold = live_value * (1 - cfg.max_relative_drop)
        decision["threshold"] = threshold
        # A drop of exactly max_relative_drop passes (0.4 * 0.9 is 0.36000000000000004).
        if value < threshold and not math.isclose(value, threshold, rel_tol=1e-9):
            msg = (
                f"quality gate refused to publish: {cfg.metric} {value:.4f} is more than "
                f"{cfg.max_relative_drop:.0%} below the live version's {live_value:.4f}; the "
                "live version keeps serving"
            )
            raise QualityGateError(msg)
        decision["relative_check"] = "passed"
    return decision


def _skipped_relative_check(live: dict[str, Any], live_value: object, metric: str) -> str:
    """Why the relative-drop check cannot run; a WARNING when a live version exists."""
    if not live:
        return "skipped: no live version"
    reason = (
        f"skipped: the live version has no measured {metric}"
        if not isinstance(live_value, int | float)
        else f"skipped: the live version's {metric} is 0"
    )
    log.warning(
        "quality gate: nothing to compare with: live version %s: %s (published by a --no-gate "
        "night?); only the floor gate.min_precision_at_5 applies",
        live.get(LIVE_VERSION, "?"),
        reason,
    )
    return reason


def connect_for_gate(settings: Settings, dry_run: bool) -> store.Client | None:
    """Redis for the run: required when publishing (exit 4 early), optional for a dry run."""
    if not dry_run:
        return store.connect(settings.redis)
    try:
        return store.connect(settings.redis)
    except RecsysError as exc:
        log.info("dry run without Redis (%s): the gate has no live version to compare", exc)
        return None
