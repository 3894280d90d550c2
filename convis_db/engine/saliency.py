"""Saliency maps and their peaks, exactly, for one concept or for all concepts at once.

y_X[i, j] = mean of max_rank_sim(e_w, X) over the windows w whose large patch holds pixel (i, j).
Windows form a grid and a large patch is a product of intervals, so the windows covering a pixel are
rows lo_i..hi_i times columns lo_j..hi_j of the grid. Pixels with the same (lo, hi) on an axis form a
segment; the map is constant on each pair of segments. Box sums over the window grid come from 2-D
prefix sums of the integer rank counts, so every map value is an exact ratio of integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


def axis_segments(length: int, stride: int, large: int, n_windows: int) -> AxisSegments:
    """Windows r with r*stride <= i < r*stride + large cover pixel i; group pixels by that window range."""
    i = np.arange(length)
    lo = np.maximum(0, (i - large) // stride + 1)
    hi = np.minimum(n_windows - 1, i // stride)
    change = np.ones(length, bool)
    change[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    start = np.flatnonzero(change)
    stop = np.append(start[1:], length)
    return AxisSegments(start, stop, lo[start], hi[start])


def grid_segments(grid: WindowGrid) -> tuple[AxisSegments, AxisSegments]:
    return (axis_segments(grid.height, grid.stride, grid.large, grid.rows),
            axis_segments(grid.width, grid.stride, grid.large, grid.cols))


def segment_means(values: torch.Tensor, grid: WindowGrid, denominator: int) -> torch.Tensor:
    """(n_windows, K) integer counts -> (n_seg_y, n_seg_x, K) float64 map values (count sums / windows / n)."""
    ys, xs = grid_segments(grid)
    k = values.shape[1]
    v = values.reshape(grid.rows, grid.cols, k).to(torch.int64)
    prefix = torch.zeros(grid.rows + 1, grid.cols + 1, k, dtype=torch.int64, device=values.device)
    prefix[1:, 1:] = v.cumsum(0).cumsum(1)
    dev = values.device
    ly, hy = torch.from_numpy(ys.lo).to(dev), torch.from_numpy(ys.hi + 1).to(dev)
    lx, hx = torch.from_numpy(xs.lo).to(dev), torch.from_numpy(xs.hi + 1).to(dev)
    sums = prefix[hy][:, hx] - prefix[ly][:, hx] - prefix[hy][:, lx] + prefix[ly][:, lx]
    counts = torch.from_numpy(np.outer(ys.counts, xs.counts)).to(dev, torch.float64)
    return sums.to(torch.float64) / (counts[..., None] * denominator)


@dataclass
class Peaks:
    score: np.ndarray   # (K,) float64 peak values
    x: np.ndarray       # (K,) int32 peak centre, working pixels
    y: np.ndarray


def peaks(values: torch.Tensor, grid: WindowGrid, denominator: int, chunk: int = 1024) -> Peaks:
    """The maximum of every column's saliency map and where it is (first in row-major order on ties)."""
    ys, xs = grid_segments(grid)
    n_x = len(xs.start)
    score, px, py = [], [], []
    for start in range(0, values.shape[1], chunk):
        means = segment_means(values[:, start:start + chunk], grid, denominator)
        flat = means.reshape(-1, means.shape[-1])
        best, where = flat.max(dim=0)
        where = where.cpu().numpy()
        score.append(best.cpu().numpy())
        py.append(ys.centres[where // n_x])
        px.append(xs.centres[where % n_x])
    return Peaks(np.concatenate(score), np.concatenate(px).astype(np.int32), np.concatenate(py).astype(np.int32))


def full_map(window_values: np.ndarray | torch.Tensor, grid: WindowGrid, denominator: int) -> np.ndarray:
    """(H, W) float32 saliency map of one concept from its per-window integer counts."""
    if not isinstance(window_values, torch.Tensor):
        window_values = torch.from_numpy(np.asarray(window_values))
    means = segment_means(window_values.reshape(-1, 1), grid, denominator)[..., 0].cpu().numpy()
    ys, xs = grid_segments(grid)
    return np.repeat(np.repeat(means, ys.lengths, axis=0), xs.lengths, axis=1).astype(np.float32)
