"""Stage 1 on a sample with the others folded in, against a full refit: P@5 of the lists (#28).

Runs the real ``recsys nightly-batch`` twice on one synthetic folder with ``--run-date``
inside the data (``--dry-run --no-gate``: the shards score every customer and save the lists
they would publish under the run folder, nothing is written to Redis, and both runs train
the same ranker on the newest weeks before the cut):

- ``sample``: the shipped default, stage 1 fit on ``scale.stage1_users`` customers and the
  rest folded in on the shards;
- ``full``: ``scale.stage1_users`` above the customer count, i.e. stage 1 fit on everyone
  (the code path before #28).

Then scores each run's top 5 against the purchases after the cut (``--weeks`` weeks), with
the evaluation's own per-user metrics, on the customers who bought something in that window,
and prints the paired bootstrap interval of ``sample - full`` (users resampled)::

    python benchmarks/fold_in_quality.py --data DIR/100x --out fold_in_quality.json

The issue's bound: the interval within +-0.005.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driver_peak import nightly_subprocess  # noqa: E402 - benchmarks/ is sys.path[0]

from recsys_batch.config import DataConfig  # noqa: E402
from recsys_batch.data import columns as C  # noqa: E402
from recsys_batch.data.sources import load_dataset  # noqa: E402
from recsys_batch.evaluation.bootstrap import paired_differences  # noqa: E402
from recsys_batch.evaluation.metrics import metric_key, per_user_metrics  # noqa: E402

K = 5
P_AT_K = metric_key("precision", K)
EVERYONE = 1_000_000_000
"""``scale.stage1_users`` above any customer count: stage 1 fit on everyone."""


def nightly(data: Path, run_date: date, runs: Path, stage1_users: int | None) -> dict[str, Any]:
    """One dry ``recsys nightly-batch``; returns its run folder, manifest and wall seconds."""
    env = dict(os.environ)
    if stage1_users is not None:
        env["RECSYS_SCALE__STAGE1_USERS"] = str(stage1_users)
    flags = ["--run-date", run_date.isoformat(), "--dry-run", "--no-gate"]
    manifest, wall = nightly_subprocess(data, runs, flags, env)
    return {"run_dir": Path(manifest["run_dir"]), "wall_s": round(wall, 1), "manifest": manifest}


def held_out_truth(data: Path, cut_day: int, weeks: int) -> pl.LazyFrame:
    """``user_id``, ``item_id`` bought in the ``weeks`` weeks after ``cut_day``."""
    dataset = load_dataset(DataConfig(source="synthetic", path=data))
    window = pl.col(C.DAY).is_between(cut_day + 1, cut_day + 7 * weeks)
    return dataset.transactions.filter(window).select(C.USER, C.ITEM).unique()


def top_lists(run_dir: Path) -> pl.LazyFrame:
    """The saved lists of a run: ``user_id``, ``item_id``, ``rank``."""
    return pl.scan_parquet(run_dir / "recommendations.parquet" / "*.parquet").select(
        C.USER, C.ITEM, C.RANK
    )


def compare(runs: dict[str, Path], truth: pl.DataFrame, draws: int) -> dict[str, Any]:
    """P@5 per run on the window's buyers, and the paired interval of sample - full."""
    buyers = truth.lazy().select(C.USER).unique()
    per_user = {
        name: per_user_metrics(top_lists(run_dir), truth.lazy(), buyers, K).collect()
        for name, run_dir in runs.items()
    }
    diff = paired_differences(per_user, P_AT_K, "sample", draws, seed=0)["full"]
    same = (
        top_lists(runs["sample"])
        .filter(pl.col(C.RANK) <= K)
        .join(top_lists(runs["full"]).filter(pl.col(C.RANK) <= K), on=[C.USER, C.ITEM], how="semi")
        .select(pl.len())
        .collect()
        .item()
    )
    served = top_lists(runs["full"]).filter(pl.col(C.RANK) <= K).select(pl.len()).collect().item()
    return {
        "precision_at_5": {
            name: f.select(pl.col(P_AT_K).mean()).item() for name, f in per_user.items()
        },
        "sample_minus_full": diff,
        "same_top5_pairs_share": same / served,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a recsys data synth folder")
    parser.add_argument("--cut-day", type=int, default=343, help="last day seen (343: week 49)")
    parser.add_argument("--weeks", type=int, default=4, help="held-out weeks after the cut")
    parser.add_argument("--runs", type=Path, default=Path("runs-fold-in-quality"))
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()

    run_date = DataConfig().origin_date + timedelta(days=args.cut_day - 1)
    results: dict[str, Any] = {"data": str(args.data), "run_date": run_date.isoformat()}
    run_dirs = {}
    for name, stage1_users in (("sample", None), ("full", EVERYONE)):
        run = nightly(args.data, run_date, args.runs / name, stage1_users)
        run_dirs[name] = run["run_dir"]
        results[name] = {"wall_s": run["wall_s"], "peak_mb": run["manifest"]["peak_memory_mb"]}
        print(name, results[name], flush=True)
    truth = held_out_truth(args.data, args.cut_day, args.weeks).collect()
    results.update(compare(run_dirs, truth, args.draws))
    results["users"] = results["sample_minus_full"]["users"]
    print(json.dumps(results, indent=2, default=str))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
