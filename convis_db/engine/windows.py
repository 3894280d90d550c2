"""The window grid and batched patch cutting on the device.

Windows start at every multiple of the stride inside the working image, (0, 0) included, so every
pixel is covered. The small and large patches of a window share its top-left corner; where a patch
reaches past the right or bottom border it is filled with the model's mean colour (zero after
normalisation), which is deterministic and carries no image content.

Patches are cut from one padded image tensor with `unfold` (a view, no copies) and resized to the
model's input size with one `interpolate` call per batch: no per-window PIL work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WindowGrid:
    height: int   # working image
    width: int
    stride: int
    small: int
    large: int

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.stride)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.stride)

    @property
    def n_windows(self) -> int:
        return self.rows * self.cols

    def boxes(self) -> np.ndarray:
        """(n_windows, 4) int32 large-patch boxes x0, y0, x1, y1 in row-major window order."""
        r, c = np.divmod(np.arange(self.n_windows), self.cols)
        y0, x0 = r * self.stride, c * self.stride
        return np.stack([x0, y0, x0 + self.large, y0 + self.large], axis=1).astype(np.int32)


def working_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size (w, h) with about max_pixels pixels and the same aspect ratio."""
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def normalise(image_u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(3, H, W) uint8 -> float32 normalised with the model's mean and std."""
    m = torch.tensor(mean, dtype=torch.float32, device=image_u8.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=image_u8.device).view(3, 1, 1)
    return (image_u8.float() / 255.0 - m) / s


class PatchCutter:
    """Cuts and resizes the small and large patches of any range of windows of one image."""

    def __init__(self, image_norm: torch.Tensor, grid: WindowGrid, out_size: int):
        self.grid = grid
        self.out_size = out_size
        pad = grid.large  # enough for the last window's large patch
        padded = F.pad(image_norm, (0, pad, 0, pad), value=0.0)
        self._views = {size: padded.unfold(1, size, grid.stride).unfold(2, size, grid.stride)
                       for size in {grid.small, grid.large}}

    def patches(self, size: int, start: int, stop: int) -> torch.Tensor:
        """(stop-start, 3, out, out) resized patches of side `size` for windows [start, stop)."""
        view = self._views[size]  # (3, R', C', size, size) with R' >= rows, C' >= cols
        idx = torch.arange(start, stop, device=view.device)
        r, c = idx // self.grid.cols, idx % self.grid.cols
        crops = view[:, r, c].permute(1, 0, 2, 3)  # (n, 3, size, size)
        if size == self.out_size:
            return crops.contiguous()
        return F.interpolate(crops, size=(self.out_size, self.out_size), mode="bicubic", align_corners=False,
                             antialias=size > self.out_size)
