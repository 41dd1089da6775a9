"""Ranker variants of the new-items list (#26) on the validation origins, one run.

For each origin (default: the validation origins, test weeks 42-45 and 46-49 of the bundled
data) the new-item candidates and their features are built once, for training (stage 1 fit
on the history, the stage-2 window's first purchases as targets) and for the test users
(stage 1 refit on everything before the test); then each variant's ranker is fit and its
top 5 scored against the test window: hit rate = hits / (5 x "all" users), the P@5 of the
``two_stage_new`` row. ``main`` ranks the same candidates with the main two-stage ranker
(``new_items.own_ranker = false``); ``anchor`` is the ``copurchase_new`` baseline.

    python benchmarks/new_items_variants.py            # cuts 45 and 49: the validation origins
    python benchmarks/new_items_variants.py --cuts 45  # one origin

Never pass the newest week (53): that origin is the final test, reported, never tuned on.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import polars as pl

from recsys_batch.config import Settings
from recsys_batch.data import columns as C
from recsys_batch.data.sources import load_dataset
from recsys_batch.evaluation.backtest import model_data
from recsys_batch.evaluation.baselines import copurchase_new_baseline
from recsys_batch.evaluation.origins import cut_after
from recsys_batch.evaluation.protocol import evaluation_users, prepare, test_truth
from recsys_batch.model import split
from recsys_batch.model.features import targets, with_targets
from recsys_batch.model.new_items_ranking import featured_new_items, scored_with
from recsys_batch.model.ranking import fit_ranker, top_k
from recsys_batch.model.training_set import stage2_users, training_frame
from recsys_batch.model.two_stage import fit_scoring_stage1

VARIANTS: dict[str, dict[str, object]] = {
    "kept": {"objective": "lambdarank", "early_stopping_rounds": 20},
    "lambdarank": {"objective": "lambdarank"},
    "rank_xendcg": {"objective": "rank_xendcg"},
    "binary": {"objective": "binary"},
}


def hit_rate(recs: pl.DataFrame, truth: pl.DataFrame, n_users: int, k: int = 5) -> float:
    """Hits in the top ``k`` / (``k`` x users)."""
    hits = recs.filter(pl.col(C.RANK) <= k).join(truth, on=[C.USER, C.ITEM], how="semi")
    return hits.height / (k * n_users)


def origin(settings: Settings, last_week: int) -> dict[str, float]:
    """Hit rate of every variant, the main ranker and the anchor at one origin."""
    dataset = load_dataset(settings.data)
    data_cut = cut_after(dataset, last_week)
    prep = prepare(data_cut, settings)
    w, tx = prep["windows"], prep["tx"].lazy()
    placeholder = settings.prefilter.placeholder_item
    truth = test_truth(tx, w, placeholder).collect()
    users = evaluation_users(tx, truth.lazy(), w)["all"].collect()
    items = data_cut.items.collect().lazy() if data_cut.items is not None else None
    people = data_cut.users.collect().lazy() if data_cut.users is not None else None
    # The backtest's own reader: with the plan tables when the calendar covers the weeks.
    data = model_data(data_cut, prep, items, people, settings, None)

    main_train, main_feats, history_model = training_frame(data, w, settings)
    main = fit_ranker(main_train, main_feats.feature_names, main_feats.categorical, settings.ranker)
    train_feats, _ = featured_new_items(
        history_model, data, stage2_users(data.transactions, w), w.history_end, settings
    )
    label = targets(
        split.stage2_window(data.transactions, w), placeholder, settings.ranker.max_label
    )
    train = with_targets(train_feats.frame, label).collect()
    scoring = fit_scoring_stage1(data, w, settings)
    test_feats, _ = featured_new_items(scoring, data, users.lazy(), w.target_end, settings)
    test = test_feats.frame.collect()

    bought = data.transactions.select(C.USER, C.ITEM).unique().collect()
    anchor = copurchase_new_baseline(
        scoring, users.lazy(), bought, 5, settings.candidates.chunk_users
    ).collect()
    out = {"anchor": hit_rate(anchor, truth, users.height)}
    out["main"] = hit_rate(top_k(scored_with(main, test).lazy(), 5).collect(), truth, users.height)
    for name, update in VARIANTS.items():
        start = time.perf_counter()
        ranker = fit_ranker(
            train.lazy(),
            train_feats.feature_names,
            train_feats.categorical,
            settings.ranker.model_copy(update=update),
        )
        recs = top_k(scored_with(ranker, test).lazy(), 5).collect()
        out[name] = hit_rate(recs, truth, users.height)
        out[f"{name}_fit_s"] = time.perf_counter() - start
    return out


def print_per_origin(
    origin_values: Callable[[Settings, int], dict[str, float]], doc: str, width: int
) -> None:
    """Parse ``--cuts`` (default 45 and 49: the validation origins) and print one line per
    origin and name of ``origin_values(settings, last_week)``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--cuts", type=int, nargs="+", default=[45, 49])
    args = parser.parse_args()
    settings = Settings()
    for last_week in args.cuts:
        weeks = f"{last_week - 3}-{last_week}"
        for name, value in origin_values(settings, last_week).items():
            print(f"test weeks {weeks}  {name:<{width}} {value:.4f}", flush=True)


def main() -> None:
    """Print one line per origin and variant."""
    print_per_origin(origin, __doc__, 20)


if __name__ == "__main__":
    main()
