"""The run history in Redis: ``P:runs``, the newest run summaries first (issue #19).

Every ``recsys nightly-batch`` that got as far as opening its run (published, dry run, gate
refused or failed) pushes one small JSON object and trims the list to :data:`MAX_RUNS`::

    LPUSH P:runs '{"run_id": ..., "status": "published", "started_at": ..., "seconds": 812.4,
                   "users": 2469, "version": ..., "gate": "passed", "gate_metric": "precision@5",
                   "gate_value": 0.2134, "error": null}'
    LTRIM P:runs 0 29

The summary is built from the run's manifest record by
:func:`recsys_batch.run.records.run_summary`; this module only stores it. It is a log for
people (the console page at ``/ui/``, ``GET /v1/runs``), not part of a version: writing it is
best effort, one attempt, and a failure is a warning that never changes the run's outcome or
exit code.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from recsys_batch.config import RedisConfig
from recsys_batch.publish import keys
from recsys_batch.publish.store import Client

log = logging.getLogger(__name__)

MAX_RUNS = 30
"""How many summaries ``P:runs`` keeps (about a month of nights)."""


def push_summary(client: Client | None, summary: dict[str, Any], cfg: RedisConfig) -> bool:
    """``LPUSH`` + ``LTRIM`` ``P:runs`` in one round trip; False (and a warning) on failure.

    Best effort: one attempt, any exception is logged and swallowed, so a Redis failure
    never changes the run's exit code.
    """
    if client is None:
        return False
    key = keys.runs_key(cfg.key_prefix)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.lpush(key, json.dumps(summary, default=str, separators=(",", ":")))
        pipe.ltrim(key, 0, MAX_RUNS - 1)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001 - the history is best effort by design
        log.warning("run summary not written to %s: %s: %s", key, type(exc).__name__, exc)
        return False
    return True
