"""The model stages' sections of :class:`recsys_batch.config.Settings`.

Stage 1 (``candidates`` and its ``als``), the new-items list (``new_items``) and stage 2
(``features``, ``ranker``). Import them from :mod:`recsys_batch.config`, which re-exports every
section; they live here to keep each module short.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """Base of every section of ``Settings``: frozen, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class AlsConfig(Section):
    """implicit's AlternatingLeastSquares."""

    factors: int = 64
    """Latent factors per user and item."""
    regularization: float = 0.05
    """L2 regularisation of the factors."""
    alpha: float = 1.0
    """Confidence scale: implicit's confidence is 1 + alpha * matrix value."""
    iterations: int = 10
    """ALS sweeps over the user-item matrix."""
    threads: int = 0
    """Threads of the ALS fit and of the co-purchase product (0 = all cores)."""
    seed: int = 42
    weighting: Literal["none", "bm25", "tfidf"] = "none"
    """Weighting applied to the user-item matrix before fitting (none scores best on the
    bundled data's backtest; docs/candidates.md)."""
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    interaction: Literal["count", "quantity", "recency"] = "count"
    """Matrix values: purchase count, quantity, or recency-decayed count."""
    recency_half_life_days: float = 60.0
    """Half-life of the ``recency`` interaction weight, in days."""


class CandidatesConfig(Section):
    """Stage 1: generators and their sizes."""

    als: AlsConfig = AlsConfig()
    n_als: int = 150
    """ALS top-N per user (own purchases included, so fewer of them are new items)."""
    n_own: int = 200
    """Own past purchases per user; kept first in the union (grocery repeats)."""
    n_copurchase: int = 40
    """Co-purchase items per user."""
    n_popular: int = 30
    """Popular items per user (not already own); also the list new users get."""
    n_trend: int = 60
    """Recent-trend items per user (not already own)."""
    max_per_user: int = 100
    """Hard cap on the union per user (the candidates stage 2 features and ranks). 100 ranks
    as well as 200 on the validation origins at half the stage-2 cost (docs/benchmarks.md);
    200 reaches the higher union recall of docs/candidates.md."""
    recent_baskets: int = 15
    """Co-purchase: seed items are those in the user's last N baskets."""
    copurchase_neighbours: int = 100
    """Co-purchase: most similar items kept per item."""
    trend_weeks: int = 4
    """Trend popularity: weeks counted back from the cut."""
    own_half_life_days: float = 60.0
    """Own-purchase score: half-life of the recency weight, in days."""
    chunk_users: int = 2000
    """Users per batched ``recommend`` call; bounds memory."""
    fit_part_lines: int = Field(default=20_000_000, ge=1)
    """About this many fit lines per part of a stage-1 group-by (each part whole users or
    baskets); bounds the fit's memory."""


class NewItemsConfig(Section):
    """New items per customer (#26): candidates a user never bought, and their ranker."""

    n_copurchase: int = 60
    """Co-purchase neighbours of the user's last baskets, per user, in items."""
    n_als: int = 60
    """ALS top new items per user, in items."""
    n_category: int = 40
    """Popular items of the user's favourite groups (``category_level``), per user, in items."""
    n_trend: int = 20
    """Trending items (stage 1's trend list) per user, in items."""
    n_list: int = 20
    """Items per user of each extra item list (promotions), in items."""
    max_per_user: int = 150
    """Cap on the union per user (best relative rank first), in items."""
    category_level: Literal["department", "category", "sub_category"] = "sub_category"
    """Item attribute whose groups the category generator uses."""
    own_ranker: bool = True
    """Rank with a ranker trained on first purchases (True) or reuse the main ranker."""
    objective: Literal["binary", "lambdarank", "rank_xendcg"] = "lambdarank"
    """LightGBM objective of the new-items ranker (its other settings are ``ranker``'s);
    lambdarank ranked first purchases best on the validation origins (docs/candidates.md)."""
    early_stopping_rounds: int = Field(default=10, ge=1)
    """Early stopping patience of the new-items ranker, in boosting rounds: its best
    iteration comes early (7-23 for the bag's members in a bundled nightly). 10 rather than
    20, with ``ranker.bin_sample_rows`` 50,000: hit rate 3.32 -> 3.41% (weeks 46-49) and
    2.70 -> 2.97% (42-45), pooled +0.0018 [-0.0002, +0.0037], for a third fewer rounds
    (``python benchmarks/settings_ab.py --list two_stage_new``, docs/candidates.md)."""
    n_models: int = Field(default=3, ge=1)
    """Bagged new-items rankers (seeds ``ranker.seed``, ``+ 1``, ...), scores averaged. One
    model stops after a few dozen rounds on a few thousand first purchases, so its hit rate swings
    with the seed (2.3-2.8% at weeks 42-45 over five seeds); a bag of 3 raised the mean at
    weeks 42-45 and narrowed the swing (docs/candidates.md)."""


class FeaturesConfig(Section):
    """Stage 2: point-in-time feature windows."""

    recent_weeks: int = 4
    """Recent activity and item trend: weeks counted back from the cut."""
    half_life_days: float = 30.0
    """Recency-weighted user x item purchase count: half-life of the weight, in days."""
    horizon_weeks: int = 4
    """Hit-rate feature: length in weeks of the past windows checked for a purchase."""
    item_attributes: tuple[str, ...] = ("department", "brand", "category")
    """Product attributes given to LightGBM as categoricals (missing = its own value)."""
    use_demographics: bool = True
    """Give household demographics to LightGBM as categoricals (missing = its own value)."""


class RankerConfig(Section):
    """Stage 2: LightGBM."""

    objective: Literal["binary", "lambdarank", "rank_xendcg"] = "rank_xendcg"
    """``rank_xendcg`` (default) and ``lambdarank`` learn the per-user order from graded labels
    (``max_label``); ``binary`` predicts bought / not bought (the label is clipped to 0/1).
    XE-NDCG matched a bag of 3 lambdarank models on Precision@5 at a third of the fit time."""
    max_label: int = 2
    """Training label = distinct days the user bought the item in the stage-2 window, capped
    here (1 = bought or not). Only the ranking objectives use grades above 1."""
    n_models: int = 1
    """Bagged ensemble: this many models (seeds ``seed``, ``seed + 1``, ...), scores averaged."""
    n_estimators: int = 600
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_child_samples: int = 200
    feature_fraction: float = 0.5
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    """L2 regularisation on leaf values."""
    cat_smooth: float = 10.0
    """LightGBM smoothing of categorical splits (product attributes, demographics)."""
    early_stopping_rounds: int = Field(default=30, ge=1)
    """Early stopping patience, in boosting rounds. 30 gives the same models as 50 at both
    validation origins (best iterations there and on the bundled nightly ~100) for ~20 fewer
    rounds (``python benchmarks/settings_ab.py --set ranker.early_stopping_rounds=30``)."""
    validation_share: float = 0.2
    """Share of training users held out for early stopping."""
    bin_sample_rows: int = Field(default=50_000, ge=1)
    """Rows LightGBM samples to place each feature's bins (``bin_construct_sample_cnt``,
    LightGBM's default 200,000). Placing them costs more than the rest of a dataset's
    construction on ~100 features; 50,000 samples: P@5 +0.0007 [-0.0014, +0.0029] pooled
    over the validation origins, each training set built in half the time
    (``python benchmarks/settings_ab.py --set ranker.bin_sample_rows=50000``)."""
    negatives_per_user: int | None = None
    """Sample at most this many negatives per user for training (None = keep all)."""
    revenue_exponent: float = 0.0
    """Rank by ``probability x expected spend ** revenue_exponent`` (0 = the ranker alone):
    the ranker's score plus this times ln of the user's expected spend on the item in one
    purchase (``ranking.log_expected_spend``, point in time). 0.12 is the smallest that lifts
    revenue@5 10% over own purchases' at both validation origins, for -0.003 to -0.004 P@5
    (issue #26; the trade-off per exponent: docs/evaluation.md); the default keeps P@5, the
    mission's metric."""
    revenue_weight: float = 0.0
    """Training weight of a positive = (its stage-2 window spend / the median positive's)
    to this power (0 = every row weighs 1): purchases worth more count more. Measured for
    issue #26 and not used: less revenue per Precision@5 lost than ``revenue_exponent``."""
    min_expected_spend: float = Field(default=0.1, gt=0.0)
    """Floor ($) of the user's past spend per purchase in that blend and of a positive's spend
    in the training weight."""
    seed: int = 42
    threads: int = 0
    """LightGBM threads (0 = all cores). ``recsys_batch`` sets ``OMP_WAIT_POLICY=PASSIVE``
    so that extra threads on a busy machine wait instead of spinning."""
    top_k: int = 5
