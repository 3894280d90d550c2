"""Saliency maps and their peaks, exactly, for one concept or for all concepts at once.

y_X[i, j] = mean of max_rank_sim(e_w, X) over the windows w whose large patch holds pixel (i, j).
Windows form a lattice (corners origin + k * stride on each axis; see engine/windows.py) and a large
patch is a product of intervals, so the windows covering a pixel are rows lo_i..hi_i times columns
lo_j..hi_j of the grid. Pixels with the same (lo, hi) on an axis form a segment; the map is constant
on each pair of segments. Sums over the covering windows are products with 0/1 coverage matrices of
the integer rank counts, so every map value is an exact ratio of integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from convis_db.engine.kernels import load_kernels, split_rows
from convis_db.engine.windows import WindowGrid


@dataclass(frozen=True)
class AxisSegments:
    start: np.ndarray  # first pixel of each segment
    stop: np.ndarray   # one past its last pixel
    lo: np.ndarray     # first covering window index on this axis
    hi: np.ndarray     # last covering window index (inclusive)

    @property
    def lengths(self) -> np.ndarray:
        return self.stop - self.start

    @property
    def counts(self) -> np.ndarray:
        return self.hi - self.lo + 1

    @property
    def centres(self) -> np.ndarray:
        return (self.start + self.stop - 1) // 2


def axis_segments(length: int, stride: int, large: int, n_windows: int, origin: int = 0) -> AxisSegments:
    """Windows r with origin + r*stride <= i < origin + r*stride + large cover pixel i; group pixels by
    that window range."""
    i = np.arange(length) - origin
    lo = np.maximum(0, (i - large) // stride + 1)
    hi = np.minimum(n_windows - 1, i // stride)
    change = np.ones(length, bool)
    change[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    start = np.flatnonzero(change)
    stop = np.append(start[1:], length)
    return AxisSegments(start, stop, lo[start], hi[start])


@lru_cache(maxsize=64)
def grid_segments(grid: WindowGrid) -> tuple[AxisSegments, AxisSegments]:
    """(row segments, column segments) of a grid; cached, since every chunk and map of an image asks."""
    return (axis_segments(grid.height, grid.stride, grid.large, grid.rows, grid.origin),
            axis_segments(grid.width, grid.stride, grid.large, grid.cols, grid.origin))


def coverage_matrix(segments: AxisSegments, n_windows: int) -> np.ndarray:
    """(n_segments, n_windows) 0/1 matrix: entry [g, r] is 1 when window r covers segment g."""
    r = np.arange(n_windows)
    return ((r[None, :] >= segments.lo[:, None]) & (r[None, :] <= segments.hi[:, None])).astype(np.float64)


def segment_means(values_t: torch.Tensor, grid: WindowGrid, denominator: int) -> torch.Tensor:
    """(K, n_windows) integer counts, synset-major -> (K, n_seg_y, n_seg_x) float64 map values.

    The sum over the covering windows of each segment pair is A_y @ V @ A_x^T with 0/1 coverage
    matrices. The inputs are integers, so the products are exact in float32 while every partial sum
    stays below 2**24 (checked), and in float64 otherwise.
    """
    ys, xs = grid_segments(grid)
    per_pixel_max = int(ys.counts.max()) * int(xs.counts.max()) * int(denominator)
    dtype = torch.float32 if per_pixel_max < 2**24 else torch.float64
    dev = values_t.device
    sums = segment_sums(values_t, grid, dtype)
    counts = torch.from_numpy(np.outer(ys.counts, xs.counts).astype(np.float64)).to(dev)
    return sums.to(torch.float64) / (counts * denominator)


def segment_sums(values_t: torch.Tensor, grid: WindowGrid, dtype: torch.dtype) -> torch.Tensor:
    """(K, n_windows) integer counts -> (K, n_seg_y, n_seg_x) sums over each segment pair's covering windows,
    A_y @ V @ A_x^T, as two large matrix products (not K small ones). The sums are exact integers in
    `dtype` (see segment_means), so the order of the additions cannot change them."""
    ys, xs = grid_segments(grid)
    k, dev = values_t.shape[0], values_t.device
    ay = torch.from_numpy(coverage_matrix(ys, grid.rows)).to(dev, dtype)
    ax = torch.from_numpy(coverage_matrix(xs, grid.cols)).to(dev, dtype)
    v = values_t.reshape(k * grid.rows, grid.cols).to(dtype)
    t = (v @ ax.T).reshape(k, grid.rows, -1).transpose(0, 1).reshape(grid.rows, -1)  # (rows, K * n_seg_x)
    return (ay @ t).reshape(len(ys.start), k, -1).transpose(0, 1)  # (K, n_seg_y, n_seg_x)


@dataclass
class Peaks:
    """Each map's peak: its value, where it is, and the value's exact terms (schema 013 stores those):
    score == np.float64(sum) / (np.float64(windows) * float(|T|)), bit for bit."""

    score: np.ndarray   # (K,) float64 peak values
    x: np.ndarray       # (K,) int32 peak centre, working pixels
    y: np.ndarray
    sum: np.ndarray     # (K,) int64: the rank_less counts summed over the windows covering the peak
    windows: np.ndarray  # (K,) int32: how many windows cover it


def peaks(values_t: torch.Tensor, grid: WindowGrid, denominator: int, chunk: int = 2048) -> Peaks:
    """The maximum of every row's saliency map (synset-major input) and where it is.

    Ties resolve to the first segment in row-major order.
    """
    ys, xs = grid_segments(grid)
    n_x = len(xs.start)
    kernels = load_kernels() if values_t.device.type == "cpu" else None
    if kernels is not None:  # one numba pass per synset row: box sums, means and the first peak
        values = values_t.contiguous().numpy()
        best = np.empty(len(values), np.float64)
        where = np.empty(len(values), np.int64)
        sums = np.empty(len(values), np.int64)
        counts = np.empty(len(values), np.int64)
        split_rows(len(values), lambda a, b: kernels.segment_peaks(
            values, grid.rows, grid.cols, ys.lo, ys.hi, xs.lo, xs.hi, float(denominator), best, where, sums,
            counts, a, b))
        return Peaks(best, xs.centres[where % n_x].astype(np.int32), ys.centres[where // n_x].astype(np.int32),
                     sums, counts.astype(np.int32))
    # Where every segment is covered by as many windows (the 'equal' layout when the stride divides the
    # large side), the map is the window sums over one constant: its peak and first peak location are
    # those of the exact integer sums, so the float64 means are made for the peaks only.
    count = int(ys.counts[0]) * int(xs.counts[0])
    uniform = bool((ys.counts == ys.counts[0]).all() and (xs.counts == xs.counts[0]).all())
    small_sums = int(ys.counts.max()) * int(xs.counts.max()) * int(denominator) < 2**24
    pair_counts = np.outer(ys.counts, xs.counts).reshape(-1)  # windows covering each segment pair, row-major
    pair_divisors: torch.Tensor | None = None
    score, px, py, top_sums, windows = [], [], [], [], []
    for start in range(0, values_t.shape[0], chunk):
        sums = segment_sums(values_t[start:start + chunk], grid, torch.float32 if small_sums else torch.float64)
        sums = sums.reshape(sums.shape[0], -1)
        if uniform and small_sums:
            best, where = sums.max(dim=1)
            best = best.to(torch.float64) / (count * denominator)
        else:  # segment_means' operations on these sums
            if pair_divisors is None:
                pair_divisors = torch.from_numpy(pair_counts.astype(np.float64)).to(sums.device) * denominator
            best, where = (sums.to(torch.float64) / pair_divisors).max(dim=1)
        top_sums.append(sums.gather(1, where[:, None])[:, 0].to(torch.float64).cpu().numpy())
        where = where.cpu().numpy()
        score.append(best.cpu().numpy())
        py.append(ys.centres[where // n_x])
        px.append(xs.centres[where % n_x])
        windows.append(pair_counts[where])
    return Peaks(np.concatenate(score), np.concatenate(px).astype(np.int32), np.concatenate(py).astype(np.int32),
                 np.concatenate(top_sums).astype(np.int64), np.concatenate(windows).astype(np.int32))


def full_map(window_values: np.ndarray | torch.Tensor, grid: WindowGrid, denominator: int) -> np.ndarray:
    """(H, W) float64 saliency map of one concept from its per-window integer counts (exact ratios)."""
    if not isinstance(window_values, torch.Tensor):
        window_values = torch.from_numpy(np.asarray(window_values))
    means = segment_means(window_values.reshape(1, -1), grid, denominator)[0].cpu().numpy()
    ys, xs = grid_segments(grid)
    return np.repeat(np.repeat(means, ys.lengths, axis=0), xs.lengths, axis=1)
