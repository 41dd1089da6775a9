"""Small, fast settings and data shared by the backtest and two-stage tests.

A permissive prefilter (300 items of 200 synthetic users), tiny ALS and candidate lists and a
30-tree ranker: the whole pipeline in seconds, with every stage still doing real work.
"""

from __future__ import annotations

from recsys_batch.config import (
    AlsConfig,
    CandidatesConfig,
    PrefilterConfig,
    RankerConfig,
    Settings,
)
from recsys_batch.data import synthetic
from recsys_batch.data.sources import Dataset

SMALL_SETTINGS = Settings(
    prefilter=PrefilterConfig(
        min_user_share=0.01,
        max_user_share=1.0,
        min_department_items=0,
        min_price=0.0,
        max_price=1e9,
        top_n=300,
    ),
    candidates=CandidatesConfig(
        als=AlsConfig(factors=8, iterations=3, threads=1),
        n_als=20,
        n_own=20,
        n_copurchase=10,
        n_popular=10,
        n_trend=5,
        max_per_user=50,
    ),
    ranker=RankerConfig(n_estimators=30, threads=1, num_leaves=7, min_child_samples=5),
)


def small_dataset(users: int = 200, seed: int = 3) -> Dataset:
    """Seeded synthetic data of the bundled shape (53 weeks)."""
    g = synthetic.generate(users, seed)
    return Dataset(g.transactions.lazy(), g.items.lazy(), g.users.lazy(), name="synthetic-test")


def small_env(users: int = 300, shard_users: int = 100) -> dict[str, str]:
    """``RECSYS_*`` variables of :data:`SMALL_SETTINGS` for a real ``recsys nightly-batch``.

    ``users`` synthetic users (``--source synthetic``) scored in shards of ``shard_users``,
    so a run writes several shards; one thread each for ALS and LightGBM.
    """
    return {
        "RECSYS_DATA__SYNTHETIC_USERS": str(users),
        "RECSYS_PREFILTER__MIN_USER_SHARE": "0.01",
        "RECSYS_PREFILTER__MAX_USER_SHARE": "1.0",
        "RECSYS_PREFILTER__MIN_DEPARTMENT_ITEMS": "0",
        "RECSYS_PREFILTER__MIN_PRICE": "0",
        "RECSYS_PREFILTER__MAX_PRICE": "1e9",
        "RECSYS_PREFILTER__TOP_N": "300",
        "RECSYS_CANDIDATES__ALS__FACTORS": "8",
        "RECSYS_CANDIDATES__ALS__ITERATIONS": "3",
        "RECSYS_CANDIDATES__ALS__THREADS": "1",
        "RECSYS_CANDIDATES__N_ALS": "20",
        "RECSYS_CANDIDATES__N_OWN": "20",
        "RECSYS_CANDIDATES__N_COPURCHASE": "10",
        "RECSYS_CANDIDATES__N_POPULAR": "10",
        "RECSYS_CANDIDATES__N_TREND": "5",
        "RECSYS_CANDIDATES__MAX_PER_USER": "50",
        "RECSYS_RANKER__N_ESTIMATORS": "30",
        "RECSYS_RANKER__THREADS": "1",
        "RECSYS_RANKER__NUM_LEAVES": "7",
        "RECSYS_RANKER__MIN_CHILD_SAMPLES": "5",
        "RECSYS_SCALE__SHARD_USERS": str(shard_users),
    }
