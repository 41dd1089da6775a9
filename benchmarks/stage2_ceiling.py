"""Stage-2 ceiling: what these candidates and features allow, with the training window removed.

Run: ``.venv/bin/python benchmarks/stage2_ceiling.py [--folds 5] [--seeds 3] [--json PATH]``.

For each seed pair (ALS and ranker seed + offset, as ``recsys evaluate --seeds``) it prints
Precision@5 of four rankers, all scoring the protocol's test features (stage 1 refit on
weeks < W-3, features as of W-3) of the "all" users:

- ``protocol``: the issue-#4 backtest (ranker trained on the stage-2 window).
- ``cross_user``: K-fold over the test users; the ranker learns from the *test-window* labels
  of the other folds' users (same horizon, season and feature cut as what it scores) and
  scores the held-out fold. A holdout: no user is scored by a model that saw its labels.
- ``pooled``: the protocol's training frame plus the other folds' test-window labels (about
  twice the data of either).
- ``in_sample``: trained and scored on the same users' test labels (300 trees, no early
  stopping). **Not a holdout**: how far the features separate bought from not bought when
  the answers are known, an upper bound for any ranker on these features.

If ``cross_user`` and ``pooled`` land where ``protocol`` does, neither the choice of the
training window nor more training data limits Precision@5: the candidates and features do.
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
from recsys_batch.data.sources import Dataset, load_dataset
from recsys_batch.evaluation.backtest import reseeded, run_backtest
from recsys_batch.evaluation.metrics import evaluate
from recsys_batch.evaluation.protocol import evaluation_users, prepare, test_truth
from recsys_batch.model import split
from recsys_batch.model.featured import featured_candidates
from recsys_batch.model.features import FeatureSet, targets, with_targets
from recsys_batch.model.model_data import ModelData
from recsys_batch.model.ranking import fit_ranker, score, top_k
from recsys_batch.model.training_set import training_frame
from recsys_batch.model.two_stage import fit_scoring_stage1

K = 5
IN_SAMPLE_TREES = 300
# Offsets the protocol frame's users so that they never share a ranking group with a test user.
POOLED_USER_OFFSET = 1 << 40


def user_folds(users: pl.Series, folds: int, seed: int) -> list[pl.Series]:
    """``folds`` disjoint, deterministic user sets covering ``users``."""
    ordered = users.unique().sort().shuffle(seed=seed)
    assignment = np.arange(len(ordered)) % folds
    return [ordered.filter(pl.Series(assignment == f)) for f in range(folds)]


def side_tables(dataset: Dataset) -> tuple[pl.LazyFrame | None, pl.LazyFrame | None]:
    """Product attributes and demographics, collected once (None where the source has none)."""
    items = dataset.items.collect().lazy() if dataset.items is not None else None
    demo = dataset.users.collect().lazy() if dataset.users is not None else None
    return items, demo


def labelled_test_frame(
    dataset: Dataset, settings: Settings, prep: dict[str, Any], users: pl.DataFrame
) -> tuple[pl.DataFrame, FeatureSet]:
    """The protocol's test candidates and features with the test window's graded label."""
    windows, catalogue, tx = prep["windows"], prep["catalogue"], prep["tx"]
    placeholder = settings.prefilter.placeholder_item
    items, demo = side_tables(dataset)
    train_tx = split.before_test(tx.lazy(), windows)
    data = ModelData(train_tx, catalogue.lazy(), items, demo)
    model = fit_scoring_stage1(data, windows, settings)
    feats = featured_candidates(model, data, users.lazy(), windows.target_end, settings)
    allowed = catalogue.lazy().select(C.ITEM).filter(pl.col(C.ITEM) != placeholder)
    labels = targets(split.test_window(tx.lazy(), windows), placeholder, settings.ranker.max_label)
    frame = with_targets(feats.frame.join(allowed, on=C.ITEM, how="semi"), labels)
    return frame.collect(), feats


def protocol_training_frame(
    dataset: Dataset, settings: Settings, prep: dict[str, Any], columns: list[str]
) -> pl.DataFrame:
    """The backtest's stage-2 training frame, its users moved out of the test users' ids."""
    items, demo = side_tables(dataset)
    data = ModelData(prep["tx"].lazy(), prep["catalogue"].lazy(), items, demo)
    frame, _, _ = training_frame(data, prep["windows"], settings)
    return frame.select(columns).with_columns(pl.col(C.USER) + POOLED_USER_OFFSET).collect()


def cross_user_top5(
    frame: pl.DataFrame,
    feats: FeatureSet,
    settings: Settings,
    folds: list[pl.Series],
    extra: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Each fold's top 5 from a ranker fit on the other folds (plus ``extra`` rows)."""
    lists = []
    for held in folds:
        is_held = pl.col(C.USER).is_in(held.implode())
        train = frame.filter(~is_held)
        if extra is not None:
            train = pl.concat([extra, train]).sort(C.USER, C.ITEM)
        ranker = fit_ranker(train.lazy(), feats.feature_names, feats.categorical, settings.ranker)
        lists.append(top_k(score(ranker, frame.filter(is_held).lazy()).lazy(), 5).collect())
    return pl.concat(lists)


def in_sample_top5(frame: pl.DataFrame, feats: FeatureSet, settings: Settings) -> pl.DataFrame:
    """Top 5 of a ranker trained on the very labels it is scored against (not a holdout)."""
    cfg = settings.ranker.model_copy(
        update={"validation_share": 0.0, "n_estimators": IN_SAMPLE_TREES}
    )
    ranker = fit_ranker(frame.lazy(), feats.feature_names, feats.categorical, cfg)
    return top_k(score(ranker, frame.lazy()).lazy(), 5).collect()


def one_seed(
    dataset: Dataset, settings: Settings, prep: dict[str, Any], folds: int
) -> dict[str, Any]:
    """Precision@5 ("all" and "seed") of the four rankers for one seed pair."""
    start = time.perf_counter()
    windows, catalogue, tx = prep["windows"], prep["catalogue"], prep["tx"]
    placeholder = settings.prefilter.placeholder_item
    truth = test_truth(tx.lazy(), windows, placeholder).collect()
    user_sets = {
        name: frame.collect()
        for name, frame in evaluation_users(tx.lazy(), truth.lazy(), windows).items()
    }
    protocol = run_backtest(dataset, settings, prepared=prep)
    frame, feats = labelled_test_frame(dataset, settings, prep, user_sets["all"])
    splits = user_folds(user_sets["all"][C.USER], folds, settings.ranker.seed)
    extra = protocol_training_frame(dataset, settings, prep, frame.columns)
    lists = {
        "cross_user": cross_user_top5(frame, feats, settings, splits),
        "pooled": cross_user_top5(frame, feats, settings, splits, extra),
        "in_sample": in_sample_top5(frame, feats, settings),
    }
    row: dict[str, Any] = {
        "als_seed": settings.candidates.als.seed,
        "ranker_seed": settings.ranker.seed,
        "protocol": {s: protocol.precision("two_stage", s) for s in user_sets},
    }
    for name, recs in lists.items():
        row[name] = {
            s: evaluate(
                recs.lazy(), truth.lazy(), users.lazy(), k=5, catalogue_size=catalogue.height
            )["precision@5"]
            for s, users in user_sets.items()
        }
    row["seconds"] = time.perf_counter() - start
    return row


def main() -> None:
    """Print one line per seed pair and ranker, then the means; write ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folds", type=int, default=K)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    settings = Settings()
    dataset = load_dataset(settings.data)
    prep = prepare(dataset, settings)
    runs = [
        one_seed(dataset, reseeded(settings, offset), prep, args.folds)
        for offset in range(max(args.seeds, 1))
    ]
    rankers = ("protocol", "cross_user", "pooled", "in_sample")
    means = {
        name: {s: float(np.mean([r[name][s] for r in runs])) for s in ("all", "seed")}
        for name in rankers
    }
    for run in runs:
        print(f"seeds {run['als_seed']}/{run['ranker_seed']} ({run['seconds']:.0f} s)")
        for name in rankers:
            print(f"  {name:<11} all {run[name]['all']:.4f}  seed {run[name]['seed']:.4f}")
    print(f"mean of {len(runs)} seed pair(s), {args.folds} folds")
    for name in rankers:
        print(f"  {name:<11} all {means[name]['all']:.4f}  seed {means[name]['seed']:.4f}")
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump({"folds": args.folds, "runs": runs, "means": means}, out, indent=2)


if __name__ == "__main__":
    main()
