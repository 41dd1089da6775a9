"""recsys_batch: the nightly two-stage recommender engine (no CLI or web imports here)."""

import os

# OpenMP threads that busy-wait for a descheduled sibling made a 2-thread LightGBM fit 5x slower
# than 1 thread on a busy 2-core machine; passive waiting keeps "all cores" safe. Set before
# lightgbm/implicit load libgomp; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
