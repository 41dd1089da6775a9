"""What the two-stage model reads (``ModelData``) and what its training gives (``TrainedTwoStage``).

The data types of :mod:`recsys_batch.model.two_stage`, apart so that the modules it is made of
(training set, persistence) share them without importing it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import polars as pl

from recsys_batch.model import candidates as stage1
from recsys_batch.model.plan_features import PlanTables
from recsys_batch.model.ranking import Ranker
from recsys_batch.model.split import Windows


@dataclass
class TrainedTwoStage:
    """Stage 1 refit for scoring, the trained ranker, and the windows it was trained on."""

    stage1_for_scoring: stage1.Stage1Model
    ranker: Ranker
    feature_names: tuple[str, ...]
    windows: Windows
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step of the training."""
    train_rows: int = 0
    """Candidate rows the ranker was fit on (users with a positive, after negative sampling)."""
    ranker_windows: Windows | None = None
    """The windows the ranker was trained on when they are not ``windows`` (a ranker reused
    from the quality gate's backtest, :func:`~recsys_batch.model.two_stage.with_gated_ranker`)."""
    forward_plan_features: bool = False
    """Whether the ranker reads the forward-looking plan features (#26): it must then be
    scored with the plan tables of the weeks it scores."""
    new_items_ranker: Ranker | None = None
    """Ranker of the new-items list (first purchases, #26; same windows as ``ranker``);
    None: the list, if any, is ranked by ``ranker``."""

    def importances(self) -> pl.DataFrame:
        """Feature importances (gain) of the ranker, most important first."""
        return self.ranker.importances()


TwoStageModel = TrainedTwoStage


@dataclass(frozen=True)
class ModelData:
    """What the two-stage model reads, passed around as one object."""

    transactions: pl.LazyFrame
    """Catalogue-applied purchases (schema ``TRANSACTIONS``); other items are the placeholder."""
    catalogue: pl.LazyFrame
    """The prefilter's catalogue (schema ``CATALOGUE``)."""
    items: pl.LazyFrame | None = None
    """Product attributes, when the source has them."""
    users: pl.LazyFrame | None = None
    """Household demographics, when the source has them."""
    plans: PlanTables | None = None
    """The plan tables of the weeks scored when the run uses the forward-looking plan
    features (``plan_features.forward_decision``); None: it does not."""

    def with_transactions(self, transactions: pl.LazyFrame) -> ModelData:
        """The same tables with other purchases (a time cut, a user shard)."""
        return dataclasses.replace(self, transactions=transactions)
