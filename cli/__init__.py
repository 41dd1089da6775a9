"""The ``recsys`` command line.

First, before any module loads polars, numpy or lightgbm, the entry point sets the allocator,
OpenMP and BLAS environment they read once, at load time. Only the batch process does this: the
engine package and the API leave the process as they find it.
"""

import ctypes
import os
import sys

# OpenMP threads that busy-wait for a descheduled sibling slow a multi-threaded LightGBM fit
# down several times on a busy machine; passive waiting keeps "all cores" safe. Set before
# lightgbm/implicit load libgomp; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One BLAS thread: an idle OpenBLAS worker spins after every call (15-65 ms of CPU each on
# the 2-core host), beside the OpenMP threads that pick implicit's top items right after
# its product. The batch's products are small (a chunk of users times the item factors),
# and the ALS fit and the fold-in ran on one BLAS thread already. OpenBLAS splits a
# product by blocks of its output, so the values are the same (published digests unchanged).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# Freed memory goes back to the OS soon, so the batch's peak is mostly its live data:
# - polars' jemalloc keeps freed pages 2 s for reuse, then returns them (no muzzy stage).
#   Returning them at once (decay 0) cost 4.7M page faults and 14 s of system time in a
#   25 s bundled nightly (peak 1.03 GB); 2 s takes it to 1.2M faults and 3.5 s (peak
#   ~1.35 GB). Polars puts its defaults (0.5 s + 1 s) before this value when it loads
#   (later options win), so it applies because the CLI imports this package before polars;
#   an explicit setting in the environment wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:2000,muzzy_decay_ms:0")
# - glibc raises its mmap threshold to the largest block freed (up to 32 MB), after which
#   the ~100 MB feature matrices come from a heap it rarely trims. A fixed threshold keeps
#   them mmapped (returned on free).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
if sys.platform == "linux" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    try:
        _libc = ctypes.CDLL("libc.so.6")
        _libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        _libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # not glibc (musl): its defaults apply
        pass
