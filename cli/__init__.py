"""The ``recsys`` command line.

First, before any module loads polars or lightgbm, the entry point sets the allocator and
OpenMP environment they read once, at load time. Only the batch process does this: the
engine package and the API leave the process as they find it.
"""

import ctypes
import os
import sys

# OpenMP threads that busy-wait for a descheduled sibling slow a multi-threaded LightGBM fit
# down several times on a busy machine; passive waiting keeps "all cores" safe. Set before
# lightgbm/implicit load libgomp; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Freed memory goes back to the OS at once, so the batch's peak is its live data, not that
# plus dead pages :
# - polars' jemalloc keeps freed pages for 0.5 s (dirty) + 1 s (muzzy), long enough to
#   overlap the next step's numpy/LightGBM (glibc malloc) allocations, which cannot reuse
#   them. Polars puts its defaults before this value when it loads (later options win), so
#   it applies because the CLI imports this package before polars; an explicit
#   setting in the environment wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
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
