"""The numba CPU kernels of ranking, propagation and map peaks give exactly what the torch/numpy code they
replace gives (that code still runs where numba is missing, and on GPUs): counts, top-k ids and their
order, maxima over descendants, peak values and first peak locations, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convis_db.engine import propagate, ranking, resize, saliency
from convis_db.engine.windows import WindowGrid

pytest.importorskip("numba", reason="the CPU kernels are compiled by numba (a dependency)")


def without_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (ranking, propagate, saliency):
        monkeypatch.setattr(module, "load_kernels", lambda: None)


@pytest.mark.parametrize("ties", ["none", "quantised", "duplicate columns"])
def test_ranking_kernel_equals_numpy(ties: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    z = rng.uniform(-1, 1, (300, 1500)).astype(np.float32)
    if ties == "quantised":
        z = np.round(z * 40) / 40  # many equal cosines everywhere, the top included
    elif ties == "duplicate columns":
        z[:, 700:720] = z[:, 10:30]  # synsets with equal definitions
        z[:5, 3] = z[:5, 4] = 1.0    # an exact tie for the best
        z[5, 0] = -0.0
        z[5, 1] = 0.0
    z = torch.from_numpy(np.ascontiguousarray(z, np.float32))
    got = ranking.rank_from_similarities(z, 100)
    without_kernels(monkeypatch)
    want = ranking.rank_from_similarities(z, 100)
    assert torch.equal(got.rank_less, want.rank_less)
    assert torch.equal(got.top_ids, want.top_ids)
    assert torch.equal(got.top_rank_less, want.top_rank_less)
    assert got.top_ids.dtype == want.top_ids.dtype and got.rank_less.dtype == want.rank_less.dtype


def former_sorted_keys(z: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The former ranking's order: np.sort of (an unsigned key ordered as the float32) << 32 | synset."""
    b = z[:, columns].view(np.uint32).astype(np.uint64)
    key = np.where(b & 0x80000000, ~b & 0xFFFFFFFF, b | 0x80000000)
    return np.sort((key << np.uint64(32)) | np.arange(len(columns), dtype=np.uint64), axis=1)


@pytest.mark.parametrize("ties", ["none", "quantised", "signed zeros, infinities", "constant rows", "duplicate columns"])
@pytest.mark.parametrize("block_rows", [1, 7, 64])
def test_rank_rows_radix_equals_former_sort_and_naive_counts(ties: str, block_rows: int) -> None:
    """The radix-sorting kernel: counts equal a naive count of strictly smaller cosines (floats compared as
    floats: -0 == +0; cosines of normalised vectors hold no NaN), `tied` flags rows whose k + 1 highest hold
    equal cosines, the top-k is the former sort's where no such tie is (and holds the same cosines where one
    is), and rows [first, last) only are written."""
    kernels = ranking.load_kernels()
    rng = np.random.default_rng(11)
    rows, n_cols, k = 23, 700, 20
    z = (rng.standard_normal((rows, n_cols)) * 0.05 + 0.2).astype(np.float32)
    columns = np.arange(n_cols, dtype=np.int64)
    if ties == "quantised":
        z = np.round(z * 60) / 60
    elif ties == "signed zeros, infinities":
        z[:, ::3] = -0.0
        z[:, 1::5] = 0.0
        z[:4, 7] = np.inf
        z[:4, 8] = -np.inf
    elif ties == "constant rows":
        z[::2] = 0.25
    else:
        columns = rng.integers(0, n_cols - 400, 900).astype(np.int64)  # synsets sharing definitions
    z = np.ascontiguousarray(z, np.float32)
    n = len(columns)
    first, last = 2, rows - 1
    rank_t = np.full((n, rows), -1, np.int32)
    top_ids = np.full((rows, k), -1, np.int64)
    top_rank = np.full((rows, k), -1, np.int32)
    tied = np.zeros(rows, np.bool_)
    synsets, by_column = ranking._entries_by_column(columns)
    kernels.rank_rows(z, synsets, by_column, np.empty((block_rows, n), np.int32), rank_t, top_ids, top_rank, tied,
                      first, last)
    assert (rank_t[:, :first] == -1).all() and (rank_t[:, last:] == -1).all() and (top_ids[:first] == -1).all()
    order = (former_sorted_keys(z, columns) & np.uint64(0xFFFFFFFF)).astype(np.int64)
    for i in range(first, last):
        row = z[i, columns]
        naive = (row[None, :] < row[:, None]).sum(axis=1)  # for each synset, how many cosines are strictly below
        np.testing.assert_array_equal(rank_t[:, i], naive)
        best = row[order[i, ::-1][:k + 1]]
        assert tied[i] == bool((best[1:] == best[:-1]).any())
        if not tied[i]:  # (tied rows take numpy's order in the caller: the kernel's order of equal cosines is its own)
            np.testing.assert_array_equal(top_ids[i], order[i, ::-1][:k])
        np.testing.assert_array_equal(top_rank[i], naive[top_ids[i]])
        np.testing.assert_array_equal(np.sort(row[top_ids[i]])[::-1], row[order[i, ::-1][:k]])
    if ties == "constant rows":
        assert tied[first:last:2].all()


def test_propagation_kernel_equals_scatter(monkeypatch: pytest.MonkeyPatch) -> None:
    # A DAG: 0 <- {1, 2}, 1 <- {3, 4}, 2 <- {4, 5} (4 has two parents), levels children-first.
    levels = [(np.array([1, 1, 2, 2]), np.array([3, 4, 4, 5])), (np.array([0, 0]), np.array([1, 2]))]
    values = torch.from_numpy(np.random.default_rng(1).integers(0, 1000, (6, 77)).astype(np.int32))
    got = propagate.Propagator(levels, torch.device("cpu")).max_over_descendants_t(values)
    without_kernels(monkeypatch)
    want = propagate.Propagator(levels, torch.device("cpu")).max_over_descendants_t(values)
    assert torch.equal(got, want)
    assert torch.equal(got[0], values.max(dim=0).values)


@pytest.mark.parametrize("layout,stride", [("equal", 16), ("origin", 16), ("equal", 24)])
def test_peaks_kernel_equals_segment_means(layout: str, stride: int, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = WindowGrid(150, 211, stride, 64, 128, layout)
    values = torch.from_numpy(np.random.default_rng(2).integers(0, 500, (40, grid.n_windows)).astype(np.int32))
    values[:, ::5] = 499  # ties between segments: the first in row-major order wins
    values[3] = 7         # a flat map
    got = saliency.peaks(values, grid, 500, chunk=16)
    without_kernels(monkeypatch)
    want = saliency.peaks(values, grid, 500, chunk=16)
    ys, xs = saliency.grid_segments(grid)
    means = saliency.segment_means(values, grid, 500)  # the former computation, float64 means of every segment
    best, where = means.reshape(len(values), -1).max(dim=1)
    for peaks_ in (got, want):
        np.testing.assert_array_equal(peaks_.score, best.numpy())
        np.testing.assert_array_equal(peaks_.x, xs.centres[where.numpy() % len(xs.start)])
        np.testing.assert_array_equal(peaks_.y, ys.centres[where.numpy() // len(xs.start)])
        # the exact terms schema 013 stores: the peak segment's integer sum and covering windows, whose
        # ratio (as a reader computes it) is the peak bit for bit
        sums = saliency.segment_sums(values, grid, torch.float64).reshape(len(values), -1)
        np.testing.assert_array_equal(peaks_.sum, sums[torch.arange(len(values)), where].numpy().astype(np.int64))
        np.testing.assert_array_equal(peaks_.windows, np.outer(ys.counts, xs.counts).reshape(-1)[where.numpy()])
        np.testing.assert_array_equal(np.float64(peaks_.sum) / (np.float64(peaks_.windows) * 500.0), peaks_.score)


def test_ranker_into_reused_buffers_equals_former_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's ranking: cosines by numpy's matmul into a given buffer (what faiss.pairwise_distances
    computes), duplicate definitions read through their shared column, counts written synset-major into a
    given buffer; equal to the former path (faiss, the expanded matrix, numpy's argsort) in every output."""
    rng = np.random.default_rng(11)
    defs = rng.standard_normal((600, 16)).astype(np.float32)
    defs[400:420] = defs[30:50]  # synsets with equal definitions
    defs /= np.linalg.norm(defs, axis=1, keepdims=True)
    emb = rng.standard_normal((333, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ranker = ranking.SynsetRanker(defs, torch.device("cpu"))
    assert ranker.n_distinct == 580
    counts = torch.empty(600, 333, dtype=torch.int32)
    cosines = torch.empty(333, ranker.n_distinct)
    got = ranker.rank(torch.from_numpy(emb), 25, out_t=counts, z_out=cosines)
    assert got.rank_less.data_ptr() == counts.data_ptr()  # no copy: the caller's memory
    import faiss

    assert torch.equal(cosines, torch.from_numpy(faiss.pairwise_distances(emb, ranker.definitions,
                                                                           metric=faiss.METRIC_INNER_PRODUCT)))
    without_kernels(monkeypatch)
    want = ranker.rank(torch.from_numpy(emb), 25)
    assert torch.equal(got.rank_less, want.rank_less)
    assert torch.equal(got.top_ids, want.top_ids)
    assert torch.equal(got.top_rank_less, want.top_rank_less)


def test_transpose8_moves_an_8_by_8_block() -> None:
    """The in-register transposition of the width pass (float32) and of the ranking's counts (int32): one
    block, from and into arrays with padded rows."""
    from numba import njit

    kernels = ranking.load_kernels()

    @njit
    def run(src, row, col, dst, dst_row, dst_col):
        kernels.transpose8(src, row, col, dst, dst_row, dst_col)

    for dtype in (np.float32, np.int32):
        src = (np.random.default_rng(3).standard_normal((20, 40)) * 1000).astype(dtype)[:, 2:33]  # padded rows
        dst = np.zeros((30, 50), dtype)[:, 5:]
        want = dst.copy()
        run(src, 3, 5, dst, 7, 9)
        want[7:15, 9:17] = src[3:11, 5:13].T
        np.testing.assert_array_equal(dst, want)


@pytest.mark.skipif(not resize.STREAM_STORES, reason="non-temporal stores are x86-64 only")
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_streamed_height_pass_equals_line_kernel(mode: int) -> None:
    """vertical_stream (vector arithmetic in LLVM IR, streamed stores) gives vertical's (numba's scalar
    combine) bits in every arithmetic form, rows read through a ring that wraps, mixed magnitudes, subnormals
    and infinities included; the forms differ, so a wrong form would show."""
    from convis_db.engine.cpu_kernels import vertical, vertical_stream

    rng = np.random.default_rng(mode)
    ring, side = 70, 224
    rows = rng.standard_normal((3, 3, ring, side)).astype(np.float32)
    rows[:, :, ::3] *= 1e3
    rows[0, 1, 5, :40] = np.float32(1e-40)  # subnormal
    rows[2, 0, 9, 100] = np.inf
    iy, wy = resize._bicubic_taps(64, side)
    cols, ys = np.array([0, 2, 1, 0, 2]), np.array([0, 6, 30, 40, 50])  # the last ones wrap around the ring
    want = np.empty((len(ys), 3, side, side), np.float32)
    vertical(rows, cols, ys, iy, wy, mode, want, ring, 0, len(ys))
    got = torch.empty(len(ys), 3, side, side)  # torch's allocations are 64-byte aligned
    assert got.data_ptr() % 32 == 0
    order = np.array([3, 0, 4, 2, 1])  # any order of the crops: each is written at its own place
    vertical_stream(rows, cols, ys, order, iy, wy, mode, got.numpy().reshape(-1), 3, side, ring, 0, 2)
    vertical_stream(rows, cols, ys, order, iy, wy, mode, got.numpy().reshape(-1), 3, side, ring, 2, len(ys))
    assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))
    other = np.empty_like(want)
    vertical(rows, cols, ys, iy, wy, (mode + 1) % 3, other, ring, 0, len(ys))
    assert not np.array_equal(other.view(np.uint32), want.view(np.uint32))
