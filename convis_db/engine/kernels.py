"""Access to the engine's numba kernels (engine/cpu_kernels.py) and running them on several threads.

numba is imported only when a kernel is first needed; without it, `load_kernels()` is None and each
caller keeps its torch or numpy code (same results, more CPU time).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def load_kernels():
    """The module engine/cpu_kernels.py (compiled kernels, cached on disk by numba), or None without numba."""
    try:
        from convis_db.engine import cpu_kernels
    except ImportError:
        log.info("numba is not installed: the engine's CPU kernels fall back to torch and numpy")
        return None
    return cpu_kernels


def split_rows(n: int, run: Callable[[int, int], object], threads: int | None = None) -> None:
    """run(first, last) over [0, n) in `threads` (default: torch's) contiguous parts at once; the kernels
    release the GIL, so the parts run in parallel."""
    threads = max(1, min(threads or torch.get_num_threads(), n))
    if threads == 1:
        run(0, n)
        return
    bounds = [int(b) for b in np.linspace(0, n, threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: run(bounds[k], bounds[k + 1]), range(threads)))
