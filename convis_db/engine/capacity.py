"""Will one image's explanation fit in memory? Checked before anything is allocated.

The engine ranks all windows of a working image against every synset at once: the similarity
matrix, its sort order, the rank counts and their synset-major copy for aggregation are each
windows x |T| entries. About 48 bytes per entry covers the peak (float32 similarities, int64 sort
order, int32 counts, copies during propagation and peak finding).
"""

from __future__ import annotations

import math
import os

from convis_db.engine.settings import Settings
from convis_db.errors import UsageError

BYTES_PER_ENTRY = 48
#: Use at most this share of the machine's memory for one image.
MEMORY_SHARE = 0.5


def physical_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 8 << 30


def windows_upper_bound(settings: Settings) -> int:
    """Windows of the largest working image these settings make (a square one, with a border margin
    of one large side so that any lattice that covers every pixel is counted)."""
    return _windows(settings.max_pixels, settings.stride, settings.large)


def _windows(max_pixels: int, stride: int, large: int) -> int:
    per_axis = math.ceil((math.sqrt(max_pixels) + large) / stride) + 1
    return per_axis * per_axis


def explanation_bytes(settings: Settings, n_synsets: int) -> int:
    return windows_upper_bound(settings) * n_synsets * BYTES_PER_ENTRY


def _largest_fitting_max_pixels(settings: Settings, n_synsets: int, budget: float) -> int:
    """The largest --max-pixels (at this stride and large side) whose estimate fits the budget."""
    lo, hi = 0, settings.max_pixels
    while lo < hi:  # the estimate grows with max_pixels: bisect
        mid = (lo + hi + 1) // 2
        if _windows(mid, settings.stride, settings.large) * n_synsets * BYTES_PER_ENTRY <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_fits(settings: Settings, n_synsets: int, memory_bytes: int | None = None) -> None:
    """UsageError naming the largest --max-pixels that fits, when one image would not."""
    if settings.top_k > n_synsets:
        raise UsageError(f"--top-k {settings.top_k} is more than the {n_synsets:,} concepts of T; "
                         f"use at most {n_synsets} (the default is 100).")
    memory = memory_bytes or physical_memory_bytes()
    budget = memory * MEMORY_SHARE
    need = explanation_bytes(settings, n_synsets)
    if need <= budget:
        return
    fits = _largest_fitting_max_pixels(settings, n_synsets, budget)
    if fits < settings.large * settings.large:
        raise UsageError(
            f"one image's ranking against {n_synsets:,} concepts does not fit in half of this machine's "
            f"{memory / 2**30:.0f} GiB even at the smallest working image; use a larger --stride or a smaller vocabulary.")
    raise UsageError(
        f"--max-pixels {settings.max_pixels:,} at --stride {settings.stride} gives up to "
        f"{windows_upper_bound(settings):,} windows per image: ranking them against {n_synsets:,} concepts needs "
        f"about {need / 2**30:.1f} GiB, more than half of this machine's {memory / 2**30:.0f} GiB. "
        f"Use --max-pixels {fits:,} or less, or a larger --stride."
    )
