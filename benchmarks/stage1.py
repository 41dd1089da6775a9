"""Stage-1 benchmark: candidate recall on the issue-#4 backtest split, time and memory.

Run: ``.venv/bin/python benchmarks/stage1.py [--json PATH] [KEY=VALUE ...]`` where each
``KEY=VALUE`` overrides a ``CandidatesConfig`` field (``als.factors=128``, ``n_als=120``).
Stage 1 is fit on every week before the test window (weeks < W-3, the catalogue computed on
the same weeks) and scored against the distinct catalogue items each "all" user bought in
the test window.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

import polars as pl

from recsys_batch.config import CandidatesConfig, Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import load_dataset
from recsys_batch.evaluation.candidate_metrics import candidate_recall
from recsys_batch.evaluation.protocol import evaluation_users, prepare, test_truth
from recsys_batch.model import split
from recsys_batch.model.candidates import fit_stage1, generate_candidates


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``a.b=1`` -> ``{"a": {"b": 1}}`` with JSON-ish values."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Print recall per generator and union, mean candidates, P@5 bound, seconds, memory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    base = CandidatesConfig().model_dump()
    for key, value in parse_overrides(args.overrides).items():
        if isinstance(value, dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    cfg = CandidatesConfig.model_validate(base)
    settings = Settings(candidates=cfg)

    t0 = time.perf_counter()
    prep = prepare(load_dataset(settings.data), settings)
    windows = prep["windows"]
    tx: pl.DataFrame = prep["tx"]
    catalogue: pl.DataFrame = prep["catalogue"]
    placeholder = settings.prefilter.placeholder_item
    truth = test_truth(tx.lazy(), windows, placeholder).collect()
    users = evaluation_users(tx.lazy(), truth.lazy(), windows)["all"].collect()
    truth = truth.join(users, on=C.USER, how="semi")
    fit_tx = split.before_test(tx.lazy(), windows).collect()
    all_users = fit_tx.select(C.USER).unique()
    prep_s = time.perf_counter() - t0
    rss_before = peak_rss_mb()

    t1, c1 = time.perf_counter(), time.process_time()
    model = fit_stage1(fit_tx.lazy(), catalogue.lazy(), cfg, placeholder)
    fit_s, fit_cpu = time.perf_counter() - t1, time.process_time() - c1
    t2, c2 = time.perf_counter(), time.process_time()
    every = generate_candidates(model, all_users.lazy(), cfg).collect()
    cand_s, cand_cpu = time.perf_counter() - t2, time.process_time() - c2
    rss_after = peak_rss_mb()

    evaluated = every.join(users, on=C.USER, how="semi")
    result = candidate_recall(evaluated.lazy(), truth.lazy())
    per_user = every.group_by(C.USER).len()
    report = {
        "config": cfg.model_dump(mode="json"),
        "windows": {"fit": f"week < {windows.target_end}", "test": f"week >= {windows.target_end}"},
        "evaluated_users": users.height,
        "catalogue_items": catalogue.height,
        "candidate_users": all_users.height,
        "recall": result,
        "max_candidates_per_user": int(per_user.select(pl.col("len").max()).item() or 0),
        "seconds": {
            "prepare": prep_s,
            "fit": fit_s,
            "candidates": cand_s,
            "fit_plus_candidates": fit_s + cand_s,
            "fit_cpu": fit_cpu,
            "candidates_cpu": cand_cpu,
        },
        "peak_rss_mib": {"after_data": rss_before, "after_stage1": rss_after},
    }
    print(
        f"users evaluated {users.height}, candidates for {all_users.height} users, "
        f"catalogue {catalogue.height}"
    )
    print(f"{'generator':<12}{'recall':>8}{'user-mean':>11}{'mean cands':>12}")
    for g, r in result["generators"].items():
        print(
            f"{g:<12}{r['recall']:>8.4f}{r['recall_user_mean']:>11.4f}{r['mean_candidates']:>12.1f}"
        )
    u = result["union"]
    print(
        f"{'union':<12}{u['recall']:>8.4f}{u['recall_user_mean']:>11.4f}{u['mean_candidates']:>12.1f}"
    )
    print(
        f"P@5 upper bound {u['precision_at_5_upper_bound']:.4f}; "
        f"max candidates/user {report['max_candidates_per_user']}"
    )
    print(
        f"fit {fit_s:.2f}s + candidates {cand_s:.2f}s = {fit_s + cand_s:.2f}s "
        f"(all {all_users.height} users); peak RSS {rss_after:.0f} MiB "
        f"(after data load {rss_before:.0f} MiB)"
    )
    print(f"CPU time (all threads): fit {fit_cpu:.2f}s + candidates {cand_cpu:.2f}s")
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
