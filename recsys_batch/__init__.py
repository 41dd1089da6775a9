"""recsys_batch: the nightly two-stage recommender engine (no CLI or web imports here)."""

__version__ = "0.1.0"
