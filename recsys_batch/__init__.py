"""recsys_batch: the nightly two-stage recommender engine.

Importing it (or any module of it) changes nothing in the process: the allocator and OpenMP
settings of the batch are made by the command line's entry point (:mod:`cli`).
"""

__version__ = "0.1.0"
