"""The window lattice and batched patch cutting on the device.

Two lattices (layouts) exist; a database records which one its images use (schema 005):

* ``equal`` (new databases): top-left corners at ``-(large - stride) + k * stride`` on both axes, up
  to the last corner that still covers the last pixel. Every pixel of the working image is then
  covered by the same number of windows, ``large / stride`` per axis when the stride divides the
  large side (otherwise the count alternates as it does in the interior, so the border is covered
  exactly like the interior). Map values near the border are means over as many windows as
  anywhere else, so the image score (the map's peak) is not drawn to thinly covered edges.
* ``origin`` (databases made before schema 005): corners at every multiple of the stride inside the
  image, (0, 0) included. Pixels within ``large`` of the top/left border are covered by fewer windows.

Where a patch reaches past any border it is filled with the model's mean colour (zero after
normalisation), which is deterministic and carries no image content. The small patch of a window
shares the large patch's top-left corner (`small_boxes`), in both layouts.

Patches are cut from one padded image tensor and resized to the model's input size straight into the
caller's batch buffer (reused from batch to batch): on the CPU, when upsampling, by the exact separable
kernel of engine/resize.py (the width pass shared by the windows of one lattice column); elsewhere
with one `interpolate` call per batch on an `unfold` view. No per-window PIL work either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from convis_db.engine.buffers import ReusedBuffer
from convis_db.engine.resize import exact_resizer

#: The lattice layouts; see the module docstring.
LAYOUTS = ("equal", "origin")
#: The layout of new databases.
DEFAULT_LAYOUT = "equal"


def lattice_origin(layout: str, stride: int, large: int) -> int:
    """The first window corner on each axis, in working pixels (<= 0)."""
    if layout == "equal":
        return -(large - stride)
    if layout == "origin":
        return 0
    raise ValueError(f"unknown window layout {layout!r}; expected one of {LAYOUTS}")


def windows_on_axis(length: int, stride: int, large: int, layout: str) -> int:
    """How many corners origin + k * stride are <= length - 1 (each of them covers a pixel)."""
    return (length - 1 - lattice_origin(layout, stride, large)) // stride + 1


@dataclass(frozen=True)
class WindowGrid:
    height: int   # working image
    width: int
    stride: int
    small: int
    large: int
    layout: str = DEFAULT_LAYOUT

    def __post_init__(self) -> None:
        lattice_origin(self.layout, self.stride, self.large)  # validates the layout

    @property
    def origin(self) -> int:
        """The first corner's x (and y) in working pixels: 0, or -(large - stride) for `equal`."""
        return lattice_origin(self.layout, self.stride, self.large)

    @property
    def rows(self) -> int:
        return windows_on_axis(self.height, self.stride, self.large, self.layout)

    @property
    def cols(self) -> int:
        return windows_on_axis(self.width, self.stride, self.large, self.layout)

    @property
    def n_windows(self) -> int:
        return self.rows * self.cols

    def corners(self) -> tuple[np.ndarray, np.ndarray]:
        """(x0, y0) int arrays of every window's top-left corner, row-major window order."""
        r, c = np.divmod(np.arange(self.n_windows), self.cols)
        return self.origin + c * self.stride, self.origin + r * self.stride

    def boxes(self) -> np.ndarray:
        """(n_windows, 4) int32 large-patch boxes x0, y0, x1, y1 (working pixels; may reach past the borders)."""
        x0, y0 = self.corners()
        return np.stack([x0, y0, x0 + self.large, y0 + self.large], axis=1).astype(np.int32)

    def small_boxes(self) -> np.ndarray:
        """(n_windows, 4) int32 small-patch boxes: the small patch shares the large patch's corner."""
        x0, y0 = self.corners()
        return np.stack([x0, y0, x0 + self.small, y0 + self.small], axis=1).astype(np.int32)


def working_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size (w, h) with about max_pixels pixels and the same aspect ratio."""
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def normalise(image_u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(3, H, W) uint8 -> float32 normalised with the model's mean and std."""
    m = torch.tensor(mean, dtype=torch.float32, device=image_u8.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=image_u8.device).view(3, 1, 1)
    return (image_u8.float() / 255.0 - m) / s


def band_rows(span: int, size: int, height: int) -> int:
    """Rows of the width pass kept per patch side (a ring: row r at r % band_rows) when the first batch of an
    image asks for `span` rows of patches of `size`: that span and `size` more, so that following batches
    (the lattice rows below) find their rows computed or room for them; never more than the padded image's
    `height`. At the paper's settings 304 and 176 of 714 rows: 60 MB in all instead of 172 MB."""
    return min(height, span + size)


@dataclass
class RowBand:
    """The width pass of padded rows [first, end) of one patch side, row r kept at store[:, :, r % ring]."""

    first: int
    end: int
    store: torch.Tensor  # (lattice columns, 3, ring, out)

    @property
    def ring(self) -> int:
        return int(self.store.shape[2])


class PatchCutter:
    """Cuts and resizes the small and large patches of any range of windows of one image."""

    def __init__(self, image_norm: torch.Tensor, grid: WindowGrid, out_size: int,
                 rows_buffer: Callable[[int], ReusedBuffer] | None = None):
        """`rows_buffer(side)`: where the width pass of patches of that side is kept (a buffer reused from
        image to image; the cutter uses it until its image's last window). None: fresh memory."""
        self.grid = grid
        self._rows_buffer = rows_buffer
        self.out_size = out_size
        before = -grid.origin  # the first corner sits `before` pixels left of / above the image
        after = grid.large     # enough for the last window's large patch
        padded = F.pad(image_norm, (before, after, before, after), value=0.0).contiguous()
        self._padded = padded
        self._views = {size: padded.unfold(1, size, grid.stride).unfold(2, size, grid.stride)
                       for size in {grid.small, grid.large}}
        cpu = padded.device.type == "cpu" and padded.dtype == torch.float32
        self._exact = {size: exact_resizer(size, out_size) if cpu else None for size in {grid.small, grid.large}}
        self._rows: dict[int, RowBand] = {}  # patch side -> its width pass

    def patches(self, size: int, start: int, stop: int) -> torch.Tensor:
        """(stop-start, 3, out, out) resized patches of side `size` for windows [start, stop) (a new tensor)."""
        out = torch.empty(stop - start, 3, self.out_size, self.out_size, device=self._padded.device)
        self.patches_into(size, start, stop, out)
        return out

    def patches_into(self, size: int, start: int, stop: int, out: torch.Tensor) -> None:
        """Write the resized patches of side `size` of windows [start, stop) into `out` ((stop-start, 3, out, out),
        contiguous: a slice of a reused batch buffer)."""
        resizer = self._exact[size]
        if resizer is None:
            out.copy_(self._torch_patches(size, start, stop))
            return
        r, c = np.divmod(np.arange(start, stop), self.grid.cols)
        band = self._row_pass(resizer, size, int(r[0]) * self.grid.stride, int(r[-1]) * self.grid.stride + size)
        resizer.height_pass_into(band.store, c, r * self.grid.stride, out, ring=band.ring)
        if stop == self.grid.n_windows:
            self._rows.pop(size, None)  # the image's last window: let go of the width pass

    def _row_pass(self, resizer, size: int, top: int, bottom: int) -> RowBand:
        """The width pass of every lattice column over padded rows [top, bottom), kept in a ring of rows: rows
        already computed for the batches above are kept, rows no batch needs any more are overwritten, and
        each row is computed once as the batches move down the image (window order is row-major)."""
        band = self._rows.get(size)
        if band is None or top < band.first or bottom - top > band.ring:
            height = self._padded.shape[1]
            ring = band_rows(bottom - top, size, height)
            shape = (self.grid.cols, 3, ring, self.out_size)
            store = self._rows_buffer(size).view(*shape) if self._rows_buffer is not None else torch.empty(shape)
            band = self._rows[size] = RowBand(top, top, store)
        band.first = max(band.first, top, bottom - band.ring)
        band.end = max(band.end, band.first)
        if band.end >= bottom:
            return band
        # Fill the whole ring: the rows below `bottom` are the next batches' (few, large calls: each call
        # splits its rows across threads, and many small ones cost more than their rows).
        goal = min(self._padded.shape[1], band.first + band.ring)
        columns = np.arange(self.grid.cols) * self.grid.stride
        while band.end < goal:  # the new rows, in at most two pieces (where the ring wraps)
            at = band.end % band.ring
            stop = min(goal, band.end + band.ring - at)
            image = self._padded[:, band.end:stop]
            resizer.width_pass(image, columns, out=band.store[:, :, at:at + stop - band.end])
            band.end = stop
        return band

    def _torch_patches(self, size: int, start: int, stop: int) -> torch.Tensor:
        view = self._views[size]  # (3, R', C', size, size) with R' >= rows, C' >= cols
        idx = torch.arange(start, stop, device=view.device)
        r, c = idx // self.grid.cols, idx % self.grid.cols
        crops = view[:, r, c].permute(1, 0, 2, 3)  # (n, 3, size, size)
        if size == self.out_size:
            return crops.contiguous()
        return F.interpolate(crops, size=(self.out_size, self.out_size), mode="bicubic", align_corners=False,
                             antialias=size > self.out_size)
