"""Crop-then-resize of many windows at once on the CPU, bit for bit what `F.interpolate` gives.

The engine upsamples every window's small and large patch to the model's input (64 -> 224 and
128 -> 224 at the paper's settings: 3,478 patches, 2 GB of float32 per image). torch's generic
bicubic kernel spends 16 taps on every output sample and writes a fresh tensor per call; this
module computes the same samples separably, straight into the caller's (reused) batch buffer:

* the width pass of every image row for each lattice column of crops (4 taps per sample), shared by
  all windows of the column,
* then each crop's height pass over those rows (4 taps per sample), written once into the output.

That is the order torch's kernel evaluates in (its inner, per-row sums along the width, then the
outer sum over 4 rows), with the same weights and the same clamping at each *crop's* edges, so
the result is identical, not merely close; whether the float rounding matches too depends on how
torch's kernel was compiled (which multiply-adds its compiler fused), so the arithmetic is chosen
by trying the known forms against `F.interpolate` on random crops once per (patch side, output
side) per process, and a build where none matches bit for bit keeps `F.interpolate` (logged).
Only upsampling without antialiasing is done here; shrinking (antialiased) stays with torch.

The kernels are compiled by numba (engine/cpu_kernels.py; without numba, or where it fails, torch's
path is used). They release the GIL, and the work is split across `torch.get_num_threads()` threads.
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from convis_db.engine.kernels import load_kernels, split_rows

log = logging.getLogger(__name__)

#: The ways a 4-tap sum sum_j v_j * w_j may have been compiled into torch's kernel, tried in order:
#: "pair": fma(v3, w3, fma(v2, w2, fma(v0, w0, v1 * w1))) (GCC's contraction of the unrolled loop,
#: seen in the x86-64 wheels), "chain": fma(v3, w3, fma(v2, w2, fma(v1, w1, v0 * w0))), "plain":
#: no fused multiply-add. The same form serves both passes (one source line of torch's kernel).
ARITHMETIC = ("pair", "chain", "plain")


def _bicubic_taps(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """(out, 4) crop-local tap indices (clamped to the crop) and float32 weights of torch's bicubic
    upsampling (align_corners=False, A = -0.75), for one axis of a `size` -> `out` resize.

    The weights follow torch's formula and its float32 rounding (with the multiply-adds its x86-64
    build fuses, evaluated exactly in float64); `exact_resizer` checks them against torch itself.
    """
    f32 = np.float32

    def fma(a, b, c):  # float32 fused multiply-add: the float64 product of two float32 is exact
        return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(f32)

    a = f32(-0.75)
    scale = f32(size) / f32(out)
    i = np.arange(out).astype(f32)
    real = fma(scale, i + f32(0.5), f32(-0.5))
    base = np.minimum(np.floor(real).astype(np.int64), size - 1)
    t = np.clip(real - base.astype(f32), f32(0), f32(1)).astype(f32)

    def near(x):  # |x| <= 1: ((A + 2) x - (A + 3)) x x + 1
        return ((fma(a + f32(2), x, -(a + f32(3))) * x) * x + f32(1)).astype(f32)

    def far(x):  # 1 < |x| < 2: ((A x - 5A) x + 8A) x - 4A
        return ((fma(fma(a, x, f32(-5) * a), x, f32(8) * a) * x) - f32(4) * a).astype(f32)

    one_minus = (f32(1) - t).astype(f32)
    weights = np.stack([far((t + f32(1)).astype(f32)), near(t), near(one_minus),
                        far((one_minus + f32(1)).astype(f32))], axis=1).astype(f32)
    index = np.clip(base[:, None] - 1 + np.arange(4)[None, :], 0, size - 1)
    return np.ascontiguousarray(index), np.ascontiguousarray(weights)


def _line_kernel():
    """The numba line kernel (cpu_kernels.vertical: 4-tap sums along lines), or None without numba."""
    kernels = load_kernels()
    return None if kernels is None else kernels.vertical


#: Whether this machine's kernels may write the patches with non-temporal stores (an x86-64 instruction).
STREAM_STORES = platform.machine().lower() in ("x86_64", "amd64")


def streams(out: torch.Tensor) -> bool:
    """Whether the height pass into `out` ((n, 3, S, S) float32) can stream its rows to memory: x86-64, a
    contiguous output at a 32-byte boundary whose rows are whole 32-byte vectors."""
    return (STREAM_STORES and out.is_contiguous() and out.dtype == torch.float32 and out.data_ptr() % 32 == 0
            and out.shape[-1] % 8 == 0)


#: The height pass runs on 1 / HEIGHT_PASS_SHARE of the threads given (at least one). It writes the 2 GB
#: of patches per image at the memory's speed: on 2 cores a second thread only stalled on memory, adding
#: CPU time (0.44-0.59 CPU-s per image instead of 0.29-0.33, one image's patches, loaded machine) and no
#: speed (wall 0.65-0.83 s vs 0.40-0.48). Larger machines keep half their threads on it (not measured).
HEIGHT_PASS_SHARE = 2


def height_pass_threads(threads: int | None) -> int:
    """Threads for a height pass offered `threads` (None: torch's count)."""
    return max(1, (threads or torch.get_num_threads()) // HEIGHT_PASS_SHARE)


@dataclass(frozen=True)
class CropResizer:
    """Resizes square crops of side `size` to `out` (upsampling) exactly as F.interpolate does."""

    size: int
    out: int
    mode: int          # index into ARITHMETIC
    index: np.ndarray  # (out, 4) int64 crop-local taps (the same on both axes)
    weight: np.ndarray  # (out, 4) float32

    def width_pass(self, image: torch.Tensor, xs: np.ndarray, threads: int | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
        """(len(xs), 3, H, out) float32: every row of image[:, :, x:x+size] resized along the width, for each
        crop column x in `xs`. Windows of one lattice column share it: the height pass reads their rows.
        `out`: where to write it (a contiguous tensor of that shape, e.g. a reused buffer's view).

        Computed on the transposed image (vectorised along the image's rows: the same sums of the same
        products as sample by sample) and written back row-major through a small tile."""
        kernels = load_kernels()
        xs = np.ascontiguousarray(xs, dtype=np.int64)
        columns = image.transpose(1, 2).contiguous()  # (3, W, H): image columns as lines
        shape = (len(xs), image.shape[0], image.shape[1], self.out)
        rows = torch.empty(shape) if out is None else out
        if tuple(rows.shape) != shape or rows.dtype != torch.float32 or rows.stride(-1) != 1:
            raise ValueError(f"width_pass: out must be a float32 tensor of shape {shape} with contiguous rows")
        src, dst = columns.numpy(), rows.numpy()
        split_rows(len(xs), lambda a, b: kernels.width_pass(src, xs, self.index, self.weight, self.mode, dst, a, b),
                   threads)
        return rows

    def height_pass_into(self, rows: torch.Tensor, cols: np.ndarray, ys: np.ndarray, out: torch.Tensor,
                         threads: int | None = None, ring: int | None = None) -> None:
        """out[p] = the crop of rows[cols[p]] starting at row ys[p], resized along the height: crop p resized
        whole. `out` is (len(ys), 3, out, out) float32 contiguous (a slice of the caller's reused buffer).
        Runs on height_pass_threads(threads) threads (memory bound).
        `ring`: row r of the width pass is kept at rows[:, :, r % ring] (default: rows.shape[2], no wrap)."""
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        ys = np.ascontiguousarray(ys, dtype=np.int64)
        ring = int(ring or rows.shape[2])
        threads = height_pass_threads(threads)
        src, dst = rows.numpy(), out.numpy()
        if streams(out) and rows.is_contiguous():  # the streaming kernel reads whole rows as vectors
            kernels = load_kernels()
            flat = dst.reshape(-1)  # a view: `out` is contiguous
            order = np.lexsort((ys, cols))  # by lattice column, then down it: the rows stay in the cache
            split_rows(len(ys), lambda a, b: kernels.vertical_stream(src, cols, ys, order, self.index, self.weight,
                                                                     self.mode, flat, out.shape[1], self.out, ring,
                                                                     a, b), threads)
            return
        vertical = _line_kernel()
        split_rows(len(ys), lambda a, b: vertical(src, cols, ys, self.index, self.weight, self.mode, dst, ring, a, b),
                   threads)

    def resize_into(self, image: torch.Tensor, ys: np.ndarray, xs: np.ndarray, out: torch.Tensor,
                    threads: int | None = None) -> None:
        """out[p] = the crop image[:, ys[p]:ys[p]+size, xs[p]:xs[p]+size] resized (crops inside `image`, a
        (3, H, W) float32 contiguous CPU tensor)."""
        columns, cols = np.unique(np.asarray(xs), return_inverse=True)
        self.height_pass_into(self.width_pass(image, columns, threads), cols.reshape(-1), ys, out, threads)


def torch_resize(crops: torch.Tensor, out: int) -> torch.Tensor:
    """The reference: torch's bicubic resize of (n, 3, s, s) crops to (out, out), antialiased when shrinking."""
    return F.interpolate(crops, size=(out, out), mode="bicubic", align_corners=False, antialias=crops.shape[-1] > out)


@functools.lru_cache(maxsize=16)
def exact_resizer(size: int, out: int) -> CropResizer | None:
    """A CropResizer for `size` -> `out` whose results were checked bit for bit against F.interpolate on
    random crops in this process, or None (shrinking, no numba, or no arithmetic form matches)."""
    if size >= out or _line_kernel() is None:
        return None
    index, weight = _bicubic_taps(size, out)
    g = torch.Generator().manual_seed(size * 1000 + out)
    # Random values plus a crop of large, mixed magnitudes: every tap and rounding path is exercised.
    image = torch.randn(3, size + 5, size + 7, generator=g)
    image[:, ::3] *= 1e3
    ys, xs = np.array([0, 5, 2]), np.array([0, 7, 3])
    crops = torch.stack([image[:, y:y + size, x:x + size] for y, x in zip(ys, xs)])
    want = torch_resize(crops, out)
    for mode, name in enumerate(ARITHMETIC):
        resizer = CropResizer(size, out, mode, index, weight)
        got = torch.empty_like(want)
        try:
            resizer.resize_into(image.contiguous(), ys, xs, got, threads=1)
        except Exception as exc:  # noqa: BLE001 - a numba that cannot compile here: keep torch's path
            log.warning("the numba resize kernel failed (%s); patches are resized with F.interpolate", exc)
            return None
        if torch.equal(got, want):
            log.debug("exact %d -> %d resize: %s arithmetic", size, out, name)
            return resizer
    log.warning("no arithmetic form reproduces this torch build's bicubic resize %d -> %d bit for bit; "
                "patches are resized with F.interpolate (slower, same results)", size, out)
    return None
