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
from numba.core import cgutils
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
def vertical(rows, cols, ys, iy, wy, mode, out, ring, first, last):  # pragma: no cover - compiled
    """out[p, ch, y, :] = the 4-tap sum over lines ys[p] + iy[y, :] of the plane rows[cols[p], ch], for
    p in [first, last): the height pass of crop p (lines = rows of the width pass, line r kept at r % ring:
    a band of rows reused as a ring). Vectorised along the lines."""
    for p in range(first, last):
        y0 = ys[p]
        for ch in range(out.shape[1]):
            plane = rows[cols[p], ch]
            for y in range(out.shape[2]):
                r0 = plane[(y0 + iy[y, 0]) % ring]
                r1 = plane[(y0 + iy[y, 1]) % ring]
                r2 = plane[(y0 + iy[y, 2]) % ring]
                r3 = plane[(y0 + iy[y, 3]) % ring]
                a0 = wy[y, 0]
                a1 = wy[y, 1]
                a2 = wy[y, 2]
                a3 = wy[y, 3]
                dst = out[p, ch, y]
                for x in range(out.shape[3]):
                    dst[x] = combine(r0[x], a0, r1[x], a1, r2[x], a2, r3[x], a3, mode)


#: Floats per non-temporal store of stream_combine (one 32-byte vector).
STREAM_FLOATS = 8


@intrinsic
def stream_combine(typingctx, dst, start, r0, r1, r2, r3, a0, a1, a2, a3, mode, count):
    """dst[start + x] = combine(r0[x], a0, r1[x], a1, r2[x], a2, r3[x], a3, mode) for x < count (1-D float32
    arrays, float32 weights), 8 samples per vector, each vector written by a 32-byte non-temporal store: the
    lines go to memory without first being read into the cache (half the memory traffic of ordinary stores
    into a buffer far larger than the cache), straight from the registers (no line buffer to store and load
    again: 0.075-0.097 -> 0.059-0.074 CPU-s per 900 patches). The same operations in the same order as
    `combine`, lane by lane (llvm.fma on vectors rounds each lane once), so the same bits. Needs
    count % 8 == 0 and dst's element `start` 32-byte aligned; x86-64 only, followed by `store_fence` before
    another thread reads dst."""
    if not (all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.float32
                for a in (dst, r0, r1, r2, r3))
            and all(w == types.float32 for w in (a0, a1, a2, a3))
            and all(isinstance(v, types.Integer) for v in (start, mode, count))):
        return None

    def codegen(context, builder, signature, args):
        intp = context.get_value_type(types.intp)
        f32p = ir.PointerType(ir.FloatType())
        vec = ir.VectorType(ir.FloatType(), STREAM_FLOATS)
        vecp = ir.PointerType(vec)

        def data(position):
            array = context.make_array(signature.args[position])(context, builder, args[position])
            return builder.bitcast(array.data, f32p)

        def integer(position):
            return context.cast(builder, args[position], signature.args[position], types.intp)

        def broadcast(value):
            out = ir.Constant(vec, ir.Undefined)
            for lane in range(STREAM_FLOATS):
                out = builder.insert_element(out, value, ir.Constant(ir.IntType(32), lane))
            return out

        out = builder.gep(data(0), [integer(1)])
        lines = [data(position) for position in (2, 3, 4, 5)]
        w = [broadcast(args[position]) for position in (6, 7, 8, 9)]
        mode_v, count_v = integer(10), integer(11)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             f"llvm.fma.v{STREAM_FLOATS}f32")
        nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        zero, step = ir.Constant(intp, 0), ir.Constant(intp, STREAM_FLOATS)

        def loop(form):  # one loop per arithmetic form: the mode is tested once per call, not per vector
            with cgutils.for_range_slice(builder, zero, count_v, step) as (i, _):
                v = [builder.load(builder.bitcast(builder.gep(line, [i]), vecp), align=4) for line in lines]
                if form == 2:  # plain: ((v0 w0 + v1 w1) + v2 w2) + v3 w3
                    acc = builder.fadd(builder.fmul(v[0], w[0]), builder.fmul(v[1], w[1]))
                    acc = builder.fadd(acc, builder.fmul(v[2], w[2]))
                    acc = builder.fadd(acc, builder.fmul(v[3], w[3]))
                else:  # pair: fma(v0, w0, v1 w1); chain: fma(v1, w1, v0 w0); then v2, v3 fused in turn
                    first, second = (0, 1) if form == 0 else (1, 0)
                    acc = builder.call(fma, [v[first], w[first], builder.fmul(v[second], w[second])])
                    acc = builder.call(fma, [v[2], w[2], acc])
                    acc = builder.call(fma, [v[3], w[3], acc])
                store = builder.store(acc, builder.bitcast(builder.gep(out, [i]), vecp), align=32)
                store.set_metadata("nontemporal", nontemporal)

        with builder.if_else(builder.icmp_signed("==", mode_v, ir.Constant(intp, 0))) as (pair, other):
            with pair:
                loop(0)
            with other:
                with builder.if_else(builder.icmp_signed("==", mode_v, ir.Constant(intp, 1))) as (chain, plain):
                    with chain:
                        loop(1)
                    with plain:
                        loop(2)
        return context.get_dummy_value()

    return types.void(dst, start, r0, r1, r2, r3, a0, a1, a2, a3, mode, count), codegen


@intrinsic
def store_fence(typingctx):
    """sfence: this thread's non-temporal stores are visible before anything it does next (x86-64)."""
    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(nogil=True, cache=True)
def vertical_stream(rows, cols, ys, order, iy, wy, mode, flat, channels, side, ring, first, last):  # pragma: no cover
    """`vertical` for an output of (len(ys), channels, side, side) float32 given flat (1-D, 32-byte aligned,
    side % 8 == 0) and C-contiguous rows: each output row is computed in registers and streamed to memory
    (stream_combine). The same samples as `vertical`; about 40% less time where the output is far larger
    than the cache, as the patch batch is. Crops are done in the order order[first:last] (a permutation of
    the crops): sorted by lattice column, then down it, the rows a crop reads are mostly still in the cache
    from the crop above (those of side 128: 0.051-0.055 -> 0.041 CPU-s per 850 crops, in batches of 128
    windows, against crops in window order, which read a different column each time)."""
    for q in range(first, last):
        p = order[q]
        y0 = ys[p]
        for ch in range(channels):
            plane = rows[cols[p], ch]
            for y in range(side):
                stream_combine(flat, ((p * channels + ch) * side + y) * side,
                               plane[(y0 + iy[y, 0]) % ring], plane[(y0 + iy[y, 1]) % ring],
                               plane[(y0 + iy[y, 2]) % ring], plane[(y0 + iy[y, 3]) % ring],
                               wy[y, 0], wy[y, 1], wy[y, 2], wy[y, 3], mode, side)
    store_fence()


@intrinsic
def transpose8(typingctx, src, row, col, dst, dst_row, dst_col):
    """dst[dst_row + j, dst_col + i] = src[row + i, col + j] for i, j < 8 (2-D float32 or int32 arrays of one
    dtype whose rows are contiguous): an 8 x 8 block transposed in registers (eight 32-byte loads, 24
    shuffles, eight 32-byte stores) instead of 64 single copies. Moves values only: results cannot change."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == 2 and dst.ndim == 2
            and src.dtype == dst.dtype and src.dtype in (types.float32, types.int32)
            and all(isinstance(v, types.Integer) for v in (row, col, dst_row, dst_col))):
        return None

    def codegen(context, builder, signature, args):
        src_v, row_v, col_v, dst_v, drow_v, dcol_v = args
        intp = context.get_value_type(types.intp)
        vec = ir.VectorType(ir.FloatType() if signature.args[0].dtype == types.float32 else ir.IntType(32), 8)
        four = ir.Constant(intp, 4)

        def index(value, position):
            return context.cast(builder, value, signature.args[position], types.intp)

        def addresses(array_v, position, first_row, first_col):
            array = context.make_array(signature.args[position])(context, builder, array_v)
            row_stride = cgutils.unpack_tuple(builder, array.strides, 2)[0]
            base = builder.add(builder.ptrtoint(array.data, intp), builder.mul(first_col, four))
            return [builder.inttoptr(builder.add(base, builder.mul(builder.add(first_row, ir.Constant(intp, i)),
                                                                    row_stride)), ir.PointerType(vec))
                    for i in range(8)]

        def shuffle(a, b, lanes):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8), lanes))

        rows = [builder.load(p, align=4) for p in addresses(src_v, 0, index(row_v, 1), index(col_v, 2))]
        lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
        t = [shuffle(rows[i], rows[i + 1], lanes) for i in range(0, 8, 2) for lanes in (lo, hi)]
        lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        s = [shuffle(t[a], t[a + 2], lanes) for a in (0, 1, 4, 5) for lanes in (lo, hi)]
        lo, hi = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
        cols = [None] * 8
        for j in range(4):
            cols[j] = shuffle(s[j], s[j + 4], lo)
            cols[j + 4] = shuffle(s[j], s[j + 4], hi)
        for value, p in zip(cols, addresses(dst_v, 3, index(drow_v, 4), index(dcol_v, 5))):
            builder.store(value, p, align=4)
        return context.get_dummy_value()

    return types.void(src, row, col, dst, dst_row, dst_col), codegen


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
                y = 0
                if width == block:  # 8 x 8 blocks in registers, then any last rows one by one
                    while y + 8 <= height:
                        transpose8(tile, 0, y, dst, y, xb)
                        transpose8(tile, 8, y, dst, y, xb + 8)
                        y += 8
                for yy in range(y, height):
                    for xi in range(width):
                        dst[yy, xb + xi] = tile[xi, yy]


#: Bits per digit of rank_rows' radix sort: four passes over 32-bit keys, 256 buckets (1 KB) each, which
#: measured faster than three passes of 11 bits (2,048 buckets) on rows of 7,000 cosines.
RADIX_BITS = 8


@njit(inline="always")
def order_key(b):
    """The float32 of bit pattern b as an unsigned key in the same order (negative values reversed); -0 < +0."""
    if b & np.uint32(0x80000000):
        return np.uint32((~b) & np.uint32(0xFFFFFFFF))
    return np.uint32(b | np.uint32(0x80000000))


@njit(inline="always")
def same_float(a, b):
    """Whether the floats of order keys a <= b (neighbours in sorted order) compare equal: equal keys that are
    not NaN (NaN keys lie beyond the infinities' keys), or -0 followed by +0."""
    if a == b:
        return np.uint32(0x007FFFFF) <= a <= np.uint32(0xFF800000)
    return a == np.uint32(0x7FFFFFFF) and b == np.uint32(0x80000000)


@njit(nogil=True, cache=True)
def rank_rows(z, synsets, columns, block, rank_t, top_ids, top_rank, tied, first, last):  # pragma: no cover - compiled
    """For rows i in [first, last) of z, with c(j) the column of z that holds synset j's cosine (synsets with
    equal definitions share one, so the expanded (W, |T|) matrix is never built):
    rank_t[j, i] = |{j' : z[i, c(j')] < z[i, c(j)]}| (equal cosines share the count), written synset-major
    through `block` (row-major scratch of at least one row, copied transposed every block.shape[0] rows);
    top_ids[i] / top_rank[i]: the k synsets of highest cosine, best first, with their counts; tied[i]:
    whether two of the k + 1 highest cosines are equal.

    The synsets come as entries e: synset synsets[e] reads column columns[e], listed by column, so that
    each row is read in order (a gather through a permutation cost twice the sort's first pass). Each
    row's values (order_key << 32 | e-th synset) are sorted by a stable least-significant-digit radix
    sort on the key (four passes of RADIX_BITS bits, a pass skipped where every key has the same digit),
    O(n) per row; one pass over the sorted row then gives the counts (where each run of equal floats
    starts: same_float) and the top-k. Equal cosines come out in entry order; nothing above depends on
    that order except the top-k of a row whose k + 1 highest hold equal cosines (tied[i]: the caller
    orders those rows itself): counts depend on the values only, and without such a tie the k highest
    cosines are distinct."""
    n = columns.shape[0]
    k = top_ids.shape[1]
    bits = z.view(np.uint32)
    buckets = 1 << RADIX_BITS
    digit = np.uint32(buckets - 1)
    low = np.uint64(0xFFFFFFFF)
    values_a = np.empty(n, np.uint64)
    values_b = np.empty(n, np.uint64)
    hist = np.empty((4, buckets), np.int32)
    rows = block.shape[0]
    for start in range(first, last, rows):
        stop = min(start + rows, last)
        for i in range(start, stop):
            hist[:] = 0
            for j in range(n):
                key = order_key(bits[i, columns[j]])
                values_a[j] = (np.uint64(key) << np.uint64(32)) | np.uint64(synsets[j])
                hist[0, key & digit] += 1
                hist[1, (key >> np.uint32(RADIX_BITS)) & digit] += 1
                hist[2, (key >> np.uint32(2 * RADIX_BITS)) & digit] += 1
                hist[3, key >> np.uint32(3 * RADIX_BITS)] += 1
            src, dst = values_a, values_b
            for d in range(4):
                shift = np.uint64(32 + d * RADIX_BITS)
                h = hist[d]
                if h[(values_a[0] >> shift) & np.uint64(digit)] == n:
                    continue  # one bucket holds every key: this pass would not move anything
                total = 0
                for q in range(buckets):
                    c = h[q]
                    h[q] = total
                    total += c
                for j in range(n):
                    v = src[j]
                    q = (v >> shift) & np.uint64(digit)
                    at = h[q]
                    h[q] = at + 1
                    dst[at] = v
                src, dst = dst, src
            counts = block[i - start]
            run = 0
            prev = np.uint32(src[0] >> np.uint64(32))
            tie = False
            for p in range(n):
                j = np.int64(src[p] & low)
                key = np.uint32(src[p] >> np.uint64(32))
                if not same_float(prev, key):
                    run = p
                elif p > 0 and p >= n - k:
                    tie = True  # equal to its neighbour below, within the k + 1 highest
                prev = key
                counts[j] = run
                if p >= n - k:
                    top_ids[i, n - 1 - p] = j
                    top_rank[i, n - 1 - p] = run
            tied[i] = tie
        count = stop - start  # block -> rank_t, 8 x 8 blocks in registers, then the edges one by one
        j = 0
        while j + 8 <= n:
            i = 0
            while i + 8 <= count:
                transpose8(block, i, j, rank_t, j, start + i)
                i += 8
            for ii in range(i, count):
                for jj in range(j, j + 8):
                    rank_t[jj, start + ii] = block[ii, jj]
            j += 8
        for jj in range(j, n):
            for ii in range(count):
                rank_t[jj, start + ii] = block[ii, jj]


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
