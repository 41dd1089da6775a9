"""Two-stage Precision@5 with vs without the forward plan features (issue #26), same run.

Run: ``.venv/bin/python benchmarks/plan_features.py [--origins 1 2] [--json PATH]``.

At each origin (0 = the final test, weeks 50-53 on the bundled data; 1 and 2 = the
validation origins, weeks 46-49 and 42-45) it runs the backtest of ``recsys evaluate`` twice
on the same prepared data: once with the forward plan features off (today's model) and once
with them decided from the calendar, as ``recsys evaluate`` does. It prints each origin's
P@5 "all" of both, then the paired bootstrap 95% interval of the difference (with minus
without), the "all" users of the validation origins given pooled (``evaluation.bootstrap_draws``
draws, ``evaluation.bootstrap_seed``), and origin 0's own interval when it is given. Choices
are made on the validation origins only; origin 0 is run once, to report it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import load_dataset
from recsys_batch.data.validation import validated
from recsys_batch.evaluation.backtest import run_backtest
from recsys_batch.evaluation.bootstrap import interval
from recsys_batch.evaluation.metrics import per_user_metrics
from recsys_batch.evaluation.origins import cut_after, origin_cuts
from recsys_batch.evaluation.protocol import evaluation_users, prepare, test_truth

METRIC = "precision@5"


def per_user_precision(
    recs: pl.DataFrame, truth: pl.DataFrame, users: pl.DataFrame, k: int
) -> pl.DataFrame:
    """``user_id, precision@k`` of every user of ``users`` (0 without a hit)."""
    return (
        per_user_metrics(recs.lazy(), truth.lazy(), users.lazy(), k)
        .select(C.USER, pl.col(f"precision@{k}").alias(METRIC))
        .collect()
    )


def origin_inputs(
    dataset: Any, settings: Settings, last_week: int
) -> tuple[Any, dict[str, Any], pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The origin ending ``last_week``: its data, ``prepare``'s output, the test window's
    truth, its "all" users and ``{"test_weeks": [first, last]}``."""
    data = cut_after(dataset, last_week)
    prep = prepare(data, settings)
    windows = prep["windows"]
    truth = test_truth(prep["tx"].lazy(), windows, settings.prefilter.placeholder_item).collect()
    users = (
        evaluation_users(prep["tx"].lazy(), truth.lazy(), windows, seed_min_items=5)["all"]
        .collect()
        .select(C.USER)
    )
    return (
        data,
        prep,
        truth,
        users,
        {"test_weeks": [windows.target_end, (windows.test_end or 0) - 1]},
    )


def intervals(diffs: dict[int, np.ndarray], cfg: Any) -> dict[str, Any]:
    """Print and return the paired bootstrap 95% intervals of per-user differences: the
    validation origins' (> 0) users pooled, and origin 0's (the final test) alone."""
    out: dict[str, Any] = {}
    validation = [j for j in diffs if j > 0]
    if validation:
        pooled = interval(
            np.concatenate([diffs[j] for j in validation]), cfg.bootstrap_draws, cfg.bootstrap_seed
        )
        print(
            f"validation origins {validation}: pooled paired 95% interval of the difference "
            f"[{pooled['lo']:+.4f}, {pooled['hi']:+.4f}] (pooled mean {pooled['mean']:+.4f})"
        )
        out["pooled"] = pooled
    if 0 in diffs:
        final = interval(diffs[0], cfg.bootstrap_draws, cfg.bootstrap_seed)
        print(f"final test (origin 0): 95% interval [{final['lo']:+.4f}, {final['hi']:+.4f}]")
        out["final_test"] = final
    return out


def origin_pair(dataset: Any, settings: Settings, last_week: int) -> dict[str, Any]:
    """Both backtests at the origin ending ``last_week``: per-user P@5 and the timings."""
    data, prep, truth, users, out = origin_inputs(dataset, settings, last_week)
    for name, forward in (("without", False), ("with", None)):
        started = time.perf_counter()
        result = run_backtest(data, settings, prepared=prep, baselines=False, forward_plans=forward)
        assert result.model is not None
        out[name] = per_user_precision(
            result.lists["two_stage"], truth, users, settings.evaluation.k
        )
        out[f"{name}_seconds"] = time.perf_counter() - started
        out[f"{name}_forward"] = result.model.forward_plan_features
        if forward is None:
            out["importances"] = result.importances.filter(
                pl.col("feature").str.contains("^p[fb]_")
            ).to_dicts()
    return out


def main() -> None:
    """Print the per-origin figures and the pooled interval; optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origins", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    settings = Settings()
    dataset = validated(load_dataset(settings.data), settings)
    cuts = origin_cuts(dataset, max(args.origins) + 1, settings.evaluation.origin_step_weeks)
    diffs: dict[int, np.ndarray] = {}
    report = []
    for j in args.origins:
        pair = origin_pair(dataset, settings, cuts[j])
        joined = pair["without"].join(pair["with"], on=C.USER, suffix="_with")
        diff = (joined[f"{METRIC}_with"] - joined[METRIC]).to_numpy()
        diffs[j] = diff
        row = {
            "origin": j,
            "test_weeks": pair["test_weeks"],
            "users": joined.height,
            "without": float(joined[METRIC].mean()),
            "with": float(joined[f"{METRIC}_with"].mean()),
            "forward_on": pair["with_forward"],
            "seconds": [round(pair["without_seconds"], 1), round(pair["with_seconds"], 1)],
            "importances": pair["importances"],
        }
        report.append(row)
        print(
            f"origin {j} weeks {row['test_weeks']}: P@5 without {row['without']:.4f}, "
            f"with {row['with']:.4f}, diff {row['with'] - row['without']:+.4f} "
            f"({row['users']} users; forward on: {row['forward_on']}; s {row['seconds']})",
            flush=True,
        )
    out: dict[str, Any] = {"origins": report, **intervals(diffs, settings.evaluation)}
    if any(r["origin"] > 0 for r in report):
        out["mean_diff"] = float(
            np.mean([r["with"] - r["without"] for r in report if r["origin"] > 0])
        )
        print(f"validation origins: mean diff {out['mean_diff']:+.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle)


if __name__ == "__main__":
    main()
