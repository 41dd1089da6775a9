"""Revenue vs Precision@5 of the two-stage lists, per revenue setting (issue #26).

Run: ``.venv/bin/python benchmarks/revenue_tradeoff.py [--origins 46-49,42-45]
[--weights 0,0.5,1] [--exponents 0,0.1,0.2,0.3,0.5,1] [--json PATH] [--dump DIR]``.

For each origin (default: the validation origins only; weeks 50-53 are the final test) it
builds the backtest of ``recsys evaluate`` once (catalogue, stage 1 refit, the "all" users'
featured test candidates, the own-purchases baseline), then for each training weight
(``ranker.revenue_weight``) fits one ranker on the same training frame and, for each
blend exponent (``ranker.revenue_exponent``), ranks with
:func:`recsys_batch.model.ranking.ranking_scores` (the code the backtest and the nightly
batch rank with) and prints P@5 and revenue@5 of the "all" users, and revenue@5 relative to
own purchases'. Weight 0 and exponent 0 is the ranker alone. ``--dump DIR`` writes, per
origin and weight, the ranker's scores with the spend features, the truth, the test-window
spend, the past purchases, the users and the own-purchases lists, to try other blends
without training again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import load_dataset
from recsys_batch.evaluation.backtest import model_data
from recsys_batch.evaluation.baseline_lists import POPULAR_WEEKS
from recsys_batch.evaluation.baselines import own_purchases_baseline
from recsys_batch.evaluation.origins import cut_after
from recsys_batch.evaluation.protocol import evaluation_users, held_out, prepare
from recsys_batch.evaluation.rows import metric_rows
from recsys_batch.model import split
from recsys_batch.model.featured import featured_candidates
from recsys_batch.model.ranking import SPEND_COLUMNS, fit_ranker, ranking_scores, score, top_k
from recsys_batch.model.training_set import training_frame
from recsys_batch.model.two_stage import fit_scoring_stage1, popular_fallback

K = 5


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def origin_rows(
    settings: Settings,
    last_week: int,
    weights: list[float],
    exponents: list[float],
    dump: str | None = None,
) -> list[dict[str, Any]]:
    """One row per (weight, exponent) at the origin whose data ends at ``last_week``."""
    dataset = cut_after(load_dataset(settings.data), last_week)
    prep = prepare(dataset, settings)
    windows: split.Windows = prep["windows"]
    catalogue: pl.DataFrame = prep["catalogue"]
    tx: pl.DataFrame = prep["tx"]
    placeholder = settings.prefilter.placeholder_item
    held = held_out(tx.lazy(), windows, placeholder)
    sets = evaluation_users(
        tx.lazy(), held.truth.lazy(), windows, seed_min_items=settings.evaluation.seed_min_items
    )
    user_sets = {"all": sets["all"].collect(), "seed": sets["seed"].collect()}
    items = dataset.items.collect().lazy() if dataset.items is not None else None
    users = dataset.users.collect().lazy() if dataset.users is not None else None
    # The backtest's own reader: the plan tables come with it when the calendar covers the
    # weeks scored, so the ranker measured here is the one `recsys evaluate` measures.
    data = model_data(dataset, prep, items, users, settings, None)

    recent = data.transactions.filter(pl.col(C.WEEK) >= windows.target_end - POPULAR_WEEKS)
    popular = popular_fallback(recent, data.catalogue, K)
    own = own_purchases_baseline(
        data.transactions,
        data.catalogue,
        user_sets["all"].lazy(),
        popular,
        settings.candidates.own_half_life_days,
        K,
    ).collect()
    # The training frame with the label's spend, read once for every weight.
    weighted = settings.model_copy(
        update={"ranker": settings.ranker.model_copy(update={"revenue_weight": 1.0})}
    )
    train, feats, _ = training_frame(data, windows, weighted)
    train_frame = train.collect()
    scoring_stage1 = fit_scoring_stage1(data, windows, settings)
    test = featured_candidates(
        scoring_stage1, data, user_sets["all"].lazy(), windows.target_end, settings
    )
    allowed = data.catalogue.select(C.ITEM).filter(pl.col(C.ITEM) != placeholder)
    frame = test.frame.join(allowed, on=C.ITEM, how="semi").collect()
    out = []
    for weight in weights:
        cfg = settings.ranker.model_copy(update={"revenue_weight": weight})
        ranker = fit_ranker(train_frame.lazy(), feats.feature_names, feats.categorical, cfg)
        if dump is not None:  # the inputs of a ranking, to try other blends offline
            folder = Path(dump) / f"{last_week}_w{weight}"
            folder.mkdir(parents=True, exist_ok=True)
            keys = frame.select(C.USER, C.ITEM, *SPEND_COLUMNS)
            scored = score(ranker, frame.lazy()).select(C.SCORE)
            pl.concat([keys, scored], how="horizontal").write_parquet(folder / "scored.parquet")
            held.truth.write_parquet(folder / "truth.parquet")
            held.spend.write_parquet(folder / "spend.parquet")
            held.bought.write_parquet(folder / "bought.parquet")
            user_sets["all"].write_parquet(folder / "users.parquet")
            own.write_parquet(folder / "own.parquet")
        for exponent in exponents:
            ranked_cfg = cfg.model_copy(update={"revenue_exponent": exponent})
            recs = top_k(ranking_scores(ranker, frame, ranked_cfg).lazy(), K).collect()
            rows, _ = metric_rows(
                {"own_purchases": own, "two_stage": recs},
                held,
                user_sets,
                catalogue.height,
                settings.evaluation,
            )
            by = {(r["model"], r["user_set"]): r for r in rows}
            mine, base = by["two_stage", "all"], by["own_purchases", "all"]
            row = {
                "test_weeks": [windows.target_end, (windows.test_end or 0) - 1],
                "revenue_weight": weight,
                "revenue_exponent": exponent,
                "precision@5": mine["precision@5"],
                "revenue@5": mine["revenue@5"],
                "own_revenue@5": base["revenue@5"],
                "revenue_vs_own": mine["revenue@5"] / base["revenue@5"] - 1.0,
                "new_share": mine["new_share"],
                "seed_precision@5": by["two_stage", "seed"]["precision@5"],
            }
            print(
                f"weeks {row['test_weeks'][0]}-{row['test_weeks'][1]} w={weight:<4} "
                f"b={exponent:<4} P@5 {row['precision@5']:.4f} rev@5 {row['revenue@5']:.3f} "
                f"(own {row['own_revenue@5']:.3f}, {100 * row['revenue_vs_own']:+.1f}%) "
                f"new_share {row['new_share']:.4f}",
                flush=True,
            )
            out.append(row)
    return out


def main() -> None:
    """Parse the arguments, run each origin, print and optionally write the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origins", default="46-49,42-45", help="test weeks, e.g. 46-49")
    parser.add_argument("--weights", default="0", help="ranker.revenue_weight values")
    parser.add_argument("--exponents", default="0,0.1,0.2,0.3,0.5,1", help="revenue_exponent")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--dump", default=None, help="write each ranking's inputs here")
    args = parser.parse_args()
    settings = Settings()
    rows = []
    start = time.perf_counter()
    for spec in args.origins.split(","):
        last_week = int(spec.split("-")[1])
        weights, exponents = _floats(args.weights), _floats(args.exponents)
        rows += origin_rows(settings, last_week, weights, exponents, args.dump)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
