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
def horizontal(image, xs, size, ix, wx, mode, rows, first, last):  # pragma: no cover - compiled
    """rows[k, ch, y, :] = the width pass of image[ch, y, xs[k]:xs[k]+size] (every image row)."""
    side = rows.shape[3]
    for k in range(first, last):
        x0 = xs[k]
        for ch in range(image.shape[0]):
            for y in range(image.shape[1]):
                src = image[ch, y]
                dst = rows[k, ch, y]
                for x in range(side):
                    dst[x] = combine(src[x0 + ix[x, 0]], wx[x, 0], src[x0 + ix[x, 1]], wx[x, 1],
                                     src[x0 + ix[x, 2]], wx[x, 2], src[x0 + ix[x, 3]], wx[x, 3], mode)


@njit(nogil=True, cache=True)
def vertical(rows, cols, ys, iy, wy, mode, out, first, last):  # pragma: no cover - compiled
    """out[p, ch] = the height pass over rows[cols[p], ch, ys[p]:ys[p]+size] (one crop each)."""
    side = out.shape[3]
    for p in range(first, last):
        y0 = ys[p]
        for ch in range(out.shape[1]):
            plane = rows[cols[p], ch]
            for y in range(side):
                r0 = plane[y0 + iy[y, 0]]
                r1 = plane[y0 + iy[y, 1]]
                r2 = plane[y0 + iy[y, 2]]
                r3 = plane[y0 + iy[y, 3]]
                a0 = wy[y, 0]
                a1 = wy[y, 1]
                a2 = wy[y, 2]
                a3 = wy[y, 3]
                dst = out[p, ch, y]
                for x in range(side):
                    dst[x] = combine(r0[x], a0, r1[x], a1, r2[x], a2, r3[x], a3, mode)


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
def segment_peaks(values, rows, cols, lo_y, hi_y, lo_x, hi_x, denominator, best, where, first, last):  # pragma: no cover
    """For rows [first, last) of values (K, rows * cols) integer window counts: the peak of the saliency map,
    best[k] = max over segment pairs (gy, gx) of sum(values[k] over windows lo..hi on both axes) /
    (count_y * count_x * denominator) in float64 (the same operations as saliency.segment_means), and
    where[k] = the first such pair in row-major order. Sums are exact int64."""
    ny = lo_y.shape[0]
    nx = lo_x.shape[0]
    prefix = np.zeros(cols + 1, np.int64)
    box = np.zeros((rows, nx), np.int64)  # per window row: the sum over each column segment's windows
    for k in range(first, last):
        for r in range(rows):
            acc = 0
            for c in range(cols):
                acc += values[k, r * cols + c]
                prefix[c + 1] = acc
            for gx in range(nx):
                box[r, gx] = prefix[hi_x[gx] + 1] - prefix[lo_x[gx]]
        top = -1.0
        at = 0
        for gy in range(ny):
            cy = hi_y[gy] - lo_y[gy] + 1
            for gx in range(nx):
                s = 0
                for r in range(lo_y[gy], hi_y[gy] + 1):
                    s += box[r, gx]
                cx = hi_x[gx] - lo_x[gx] + 1
                mean = np.float64(s) / (np.float64(cy * cx) * denominator)
                if mean > top:
                    top = mean
                    at = gy * nx + gx
        best[k] = top
        where[k] = at
