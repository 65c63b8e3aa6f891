"""glibc malloc tuning for receive workers.

Each decoded batch allocates a few hundred KB (joined data sets, the output array).  Above glibc's
mmap threshold every such block is a fresh mmap whose pages fault in one by one and go back to the
kernel on free: that churn halves the ingest rate.  Keeping these blocks on the heap avoids it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("celltap.collector")
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_batches_on_heap(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where that is not possible."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    if not ok:
        log.debug("mallopt refused the thresholds; allocations stay as they are")
    return ok
