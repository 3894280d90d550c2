"""The engine's numba kernels for the CPU: the exact patch resize (engine/resize.py), ranking a window's
row of cosines (engine/ranking.py) and the max propagation up T (engine/propagate.py).

Imported only through `load()` when first needed (numba takes a moment to load; each kernel is compiled
once and cached on disk). Every kernel releases the GIL: callers split rows across threads. Without
numba the callers keep their torch/numpy code, which gives the same results.

`combine` is one 4-tap sum in the arithmetic form `mode` (resize.ARITHMETIC); `fma` is LLVM's fused
multiply-add (one rounding), which plain Python arithmetic in numba never produces by itself.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def fma(typingctx, x, y, z):
    """fma(x, y, z) = x * y + z rounded once (llvm.fma)."""
    if not all(isinstance(v, types.Float) for v in (x, y, z)):
        return None

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)

    return x(x, y, z), codegen


@njit(inline="always")
def combine(v0, w0, v1, w1, v2, w2, v3, w3, mode):
    if mode == 2:
        return ((v0 * w0 + v1 * w1) + v2 * w2) + v3 * w3
    if mode == 0:
        acc = fma(v0, w0, v1 * w1)
    else:
        acc = fma(v1, w1, v0 * w0)
    return fma(v3, w3, fma(v2, w2, acc))


@njit(nogil=True, cache=True)
def vertical(rows, cols, ys, iy, wy, mode, out, first, last):  # pragma: no cover - compiled
    """out[p, ch, y, :] = the 4-tap sum over lines ys[p] + iy[y, :] of the plane rows[cols[p], ch], for
    p in [first, last): the height pass of crop p (lines = rows of the width pass), or, on a transposed
    image, the width pass of a lattice column (lines = image columns). Vectorised along the lines."""
    for p in range(first, last):
        y0 = ys[p]
        for ch in range(out.shape[1]):
            plane = rows[cols[p], ch]
            for y in range(out.shape[2]):
                r0 = plane[y0 + iy[y, 0]]
                r1 = plane[y0 + iy[y, 1]]
                r2 = plane[y0 + iy[y, 2]]
                r3 = plane[y0 + iy[y, 3]]
                a0 = wy[y, 0]
                a1 = wy[y, 1]
                a2 = wy[y, 2]
                a3 = wy[y, 3]
                dst = out[p, ch, y]
                for x in range(out.shape[3]):
                    dst[x] = combine(r0[x], a0, r1[x], a1, r2[x], a2, r3[x], a3, mode)


@njit(nogil=True, cache=True)
def width_pass(columns, xs, ix, wx, mode, out, first, last):  # pragma: no cover - compiled
    """out[p, ch, y, x] = the 4-tap sum along image row y for output column x of the crop columns starting at
    xs[p], p in [first, last). `columns` is the image transposed, (3, W, H): each sum is vectorised along
    the image's rows (lines), 16 output columns at a time, and written back row-major through a small tile."""
    height = columns.shape[2]
    side = out.shape[3]
    block = 16
    tile = np.empty((block, height), np.float32)
    for p in range(first, last):
        x0 = xs[p]
        for ch in range(columns.shape[0]):
            plane = columns[ch]
            for xb in range(0, side, block):
                width = min(block, side - xb)
                for xi in range(width):
                    x = xb + xi
                    r0 = plane[x0 + ix[x, 0]]
                    r1 = plane[x0 + ix[x, 1]]
                    r2 = plane[x0 + ix[x, 2]]
                    r3 = plane[x0 + ix[x, 3]]
                    a0 = wx[x, 0]
                    a1 = wx[x, 1]
                    a2 = wx[x, 2]
                    a3 = wx[x, 3]
                    line = tile[xi]
                    for y in range(height):
                        line[y] = combine(r0[y], a0, r1[y], a1, r2[y], a2, r3[y], a3, mode)
                dst = out[p, ch]
                for y in range(height):
                    for xi in range(width):
                        dst[y, xb + xi] = tile[xi, y]


@njit(nogil=True, cache=True)
def sort_keys(z, keys, first, last):  # pragma: no cover - compiled
    """keys[i, j] = (an unsigned key that sorts like the float32 z[i, j]) << 32 | j, for rows [first, last):
    np.sort of a row of keys is an ascending order of the row's cosines (equal ones by index)."""
    bits = z.view(np.uint32)
    for i in range(first, last):
        for j in range(z.shape[1]):
            b = bits[i, j]
            key = (~b) & np.uint32(0xFFFFFFFF) if b & np.uint32(0x80000000) else b | np.uint32(0x80000000)
            keys[i, j] = (np.uint64(key) << np.uint64(32)) | np.uint64(j)


@njit(nogil=True, cache=True)
def ranks_from_sorted_keys(z, keys, rank_less, top_ids, top_rank, tied, first, last):  # pragma: no cover
    """From each row's sorted keys: rank_less[i, j] = |{j' : z[i, j'] < z[i, j]}| (equal cosines share the
    count), the top-k synsets by cosine (best first) with their counts, and whether any two of the k + 1
    highest cosines are equal (then the top-k's order, or membership, depends on the sort used)."""
    n = z.shape[1]
    k = top_ids.shape[1]
    mask = np.uint64(0xFFFFFFFF)
    for i in range(first, last):
        run = 0
        prev = z[i, np.int64(keys[i, 0] & mask)]
        tie = False
        for p in range(n):
            j = np.int64(keys[i, p] & mask)
            v = z[i, j]
            if v != prev:
                run = p
            elif p > 0 and p >= n - k:
                tie = True  # equal to its neighbour below, within the k + 1 highest
            prev = v
            rank_less[i, j] = run
            if p >= n - k:
                top_ids[i, n - 1 - p] = j
                top_rank[i, n - 1 - p] = run
        tied[i] = tie


@njit(nogil=True, cache=True)
def propagate_max(values, parents, children, first, last):  # pragma: no cover - compiled
    """values[p, w] = max(values[p, w], values[c, w]) for every edge (p, c) in order, columns [first, last):
    edges listed level by level, children before their parents, make each row the max over its
    descendants."""
    for e in range(parents.shape[0]):
        p = parents[e]
        c = children[e]
        for w in range(first, last):
            values[p, w] = max(values[p, w], values[c, w])


@njit(nogil=True, cache=True)
def segment_peaks(values, rows, cols, lo_y, hi_y, lo_x, hi_x, denominator, best, where, sums, counts,
                  first, last):  # pragma: no cover
    """For rows [first, last) of values (K, rows * cols) integer window counts: the peak of the saliency map,
    best[k] = max over segment pairs (gy, gx) of sum(values[k] over windows lo..hi on both axes) /
    (count_y * count_x * denominator) in float64 (the same operations as saliency.segment_means),
    where[k] = the first such pair in row-major order, and the peak's exact terms: sums[k] (the integer
    sum) and counts[k] (count_y * count_x, the windows covering it), so best[k] = sums[k] / (counts[k] *
    denominator). Sums are exact int64 (2-D prefix sums); where every pair has the same window count,
    sums are compared and only the peak is divided."""
    ny = lo_y.shape[0]
    nx = lo_x.shape[0]
    uniform = True
    for g in range(ny):
        uniform = uniform and hi_y[g] - lo_y[g] == hi_y[0] - lo_y[0]
    for g in range(nx):
        uniform = uniform and hi_x[g] - lo_x[g] == hi_x[0] - lo_x[0]
    prefix = np.zeros(cols + 1, np.int64)
    cum = np.zeros((rows + 1, nx), np.int64)  # cum[r, gx]: sum over window rows < r of each column segment
    for k in range(first, last):
        for r in range(rows):
            acc = 0
            for c in range(cols):
                acc += values[k, r * cols + c]
                prefix[c + 1] = acc
            for gx in range(nx):
                cum[r + 1, gx] = cum[r, gx] + prefix[hi_x[gx] + 1] - prefix[lo_x[gx]]
        at = 0
        top_sum = -1
        top_count = 1
        if uniform:
            for gy in range(ny):
                for gx in range(nx):
                    s = cum[hi_y[gy] + 1, gx] - cum[lo_y[gy], gx]
                    if s > top_sum:
                        top_sum = s
                        at = gy * nx + gx
            cy = hi_y[0] - lo_y[0] + 1
            cx = hi_x[0] - lo_x[0] + 1
            top_count = cy * cx
            best[k] = np.float64(top_sum) / (np.float64(top_count) * denominator)
        else:
            top = -1.0
            for gy in range(ny):
                cy = hi_y[gy] - lo_y[gy] + 1
                for gx in range(nx):
                    s = cum[hi_y[gy] + 1, gx] - cum[lo_y[gy], gx]
                    cx = hi_x[gx] - lo_x[gx] + 1
                    mean = np.float64(s) / (np.float64(cy * cx) * denominator)
                    if mean > top:
                        top = mean
                        at = gy * nx + gx
                        top_sum = s
                        top_count = cy * cx
            best[k] = top
        where[k] = at
        sums[k] = top_sum
        counts[k] = top_count
