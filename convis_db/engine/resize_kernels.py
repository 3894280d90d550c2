"""The numba kernels of engine/resize.py (imported only when first needed: numba takes a moment to load).

`combine` is one 4-tap sum in the arithmetic form `mode` (resize.ARITHMETIC); `fma` is LLVM's fused
multiply-add (one rounding), which plain Python arithmetic in numba never produces by itself.
"""

from __future__ import annotations

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
