"""The ``recsys`` command line."""

# First, before any module loads polars or lightgbm: the engine sets the allocator and
# OpenMP environment they read once, at load time (see recsys_batch/__init__.py).
import recsys_batch  # noqa: F401
