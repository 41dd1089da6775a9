"""Two-stage Precision@5 and fit time of today's settings vs changed ones, same run.

Run: ``.venv/bin/python benchmarks/settings_ab.py --set ranker.negatives_per_user=50
[--set SECTION.NAME=VALUE ...] [--list two_stage_new] [--origins 1 2] [--json PATH]``.

At each origin (1 and 2 = the validation origins, weeks 46-49 and 42-45 on the bundled
data; 0 = the final test, weeks 50-53) it runs the backtest of ``recsys evaluate`` twice on
the same prepared data: with the settings of the environment and config file ("base") and
with the ``--set`` values on top ("changed"). It prints each origin's P@5 "all" of both
for the list ``--list`` names (``two_stage``, the default, or ``two_stage_new``: the
new-items list, whose P@5 is its hit rate; the backtest then builds the baselines too),
the seconds each backtest took, and the paired bootstrap 95% interval of the difference
(changed minus base), the "all" users of the validation origins given pooled. A setting
is chosen on the validation origins only; origin 0 is run once, to report it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from plan_features import (  # benchmarks/ is sys.path[0]
    METRIC,
    intervals,
    origin_inputs,
    per_user_precision,
)

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import load_dataset
from recsys_batch.data.validation import validated
from recsys_batch.evaluation.backtest import run_backtest
from recsys_batch.evaluation.origins import origin_cuts


def changed_settings(base: Settings, assignments: list[str]) -> Settings:
    """``base`` with each ``SECTION.NAME=VALUE`` applied (validated as the config file is)."""
    update: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        section, _, field = name.partition(".")
        if not field or not value:
            msg = f"--set {assignment!r}: expected SECTION.NAME=VALUE, e.g. ranker.seed=7"
            raise SystemExit(msg)
        # Text as in the environment: pydantic turns "50" into 50 and "none" into None.
        update.setdefault(section, {})[field] = None if value.lower() == "none" else value
    merged = base.model_dump()
    for section, fields in update.items():
        merged[section] = {**merged[section], **fields}
    return Settings.model_validate(merged)


def origin_pair(
    dataset: Any, base: Settings, changed: Settings, last_week: int, name: str
) -> dict[str, Any]:
    """Both backtests at the origin ending ``last_week``: per-user P@5 of list ``name`` and
    their seconds."""
    data, prep, truth, users, out = origin_inputs(dataset, base, last_week)
    for arm, settings in (("base", base), ("changed", changed)):
        started = time.perf_counter()
        result = run_backtest(data, settings, prepared=prep, baselines=name != "two_stage")
        out[f"{arm}_seconds"] = time.perf_counter() - started
        out[arm] = per_user_precision(result.lists[name], truth, users, base.evaluation.k)
    return out


def main() -> None:
    """Print the per-origin figures and the pooled interval; optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="assignments", action="append", required=True)
    parser.add_argument("--list", default="two_stage", choices=["two_stage", "two_stage_new"])
    parser.add_argument("--origins", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    base = Settings()
    changed = changed_settings(base, args.assignments)
    dataset = validated(load_dataset(base.data), base)
    cuts = origin_cuts(dataset, max(args.origins) + 1, base.evaluation.origin_step_weeks)
    diffs: dict[int, np.ndarray] = {}
    report = []
    for j in args.origins:
        pair = origin_pair(dataset, base, changed, cuts[j], args.list)
        joined = pair["base"].join(pair["changed"], on=C.USER, suffix="_changed")
        diffs[j] = (joined[f"{METRIC}_changed"] - joined[METRIC]).to_numpy()
        row = {
            "origin": j,
            "test_weeks": pair["test_weeks"],
            "users": joined.height,
            "base": float(joined[METRIC].mean()),
            "changed": float(joined[f"{METRIC}_changed"].mean()),
            "seconds": [round(pair["base_seconds"], 1), round(pair["changed_seconds"], 1)],
        }
        report.append(row)
        print(
            f"origin {j} weeks {row['test_weeks']}: P@5 base {row['base']:.4f}, changed "
            f"{row['changed']:.4f}, diff {row['changed'] - row['base']:+.4f} ({row['users']} "
            f"users; backtest s base/changed {row['seconds']})",
            flush=True,
        )
    out: dict[str, Any] = {"set": args.assignments, "list": args.list, "origins": report}
    out.update(intervals(diffs, base.evaluation))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle)


if __name__ == "__main__":
    main()
