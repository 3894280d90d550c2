"""Rank window embeddings against every synset of T: rank_sim(e, s) = |{s' : z(e,s') < z(e,s)}| / |T|.

FAISS computes the exact inner products of L2-normalised vectors (cosines) between windows and the
synset definitions (`pairwise_distances` on the CPU, `pairwise_distance_gpu` on a GPU). The full
ranking needs k = |T| (about 7,300), beyond the GPU k-selection limit of 2048, so ranks come from one
full sort of each row on the same device. Ties are exact: a synset's count is the number of synsets
with a strictly smaller cosine, so equal cosines share a rank, as in the paper's strict '<'.

Ranks are kept as integer counts (`rank_less`); rank_sim = rank_less / |T|. Integers make the later
sums over windows exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from convis_db.engine.kernels import load_kernels, split_rows

log = logging.getLogger(__name__)


@dataclass
class Ranking:
    rank_less: torch.Tensor   # (W, n) int32: number of synsets with a smaller cosine
    top_ids: torch.Tensor     # (W, K) int64: the K synsets with the highest cosine, best first
    top_rank_less: torch.Tensor  # (W, K) int32


def _faiss_gpu_available() -> bool:
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001
        return False


class SynsetRanker:
    """Holds the definition matrix on the device and ranks batches of window embeddings against it."""

    def __init__(self, definitions: np.ndarray, device: torch.device):
        self.n = int(definitions.shape[0])
        self.device = device
        # Synsets whose definitions embed to the same vector must tie exactly. BLAS kernels may round
        # two equal rows differently (edge tiles take another code path), so similarities are computed
        # against the distinct rows only and expanded back: equal inputs give equal cosines.
        distinct, inverse = np.unique(np.asarray(definitions, dtype=np.float32), axis=0, return_inverse=True)
        if len(distinct) < self.n:
            self.definitions = np.ascontiguousarray(distinct)
            self._expand = torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(device)
            self._columns = np.ascontiguousarray(inverse.reshape(-1), dtype=np.int64)
            log.info("%d of %d definition embeddings are exact duplicates; they share their ranks",
                     self.n - len(distinct), self.n)
        else:
            self.definitions = np.array(definitions, dtype=np.float32, order="C", copy=True)
            self._expand = None
            self._columns = np.arange(self.n, dtype=np.int64)
        self._entries = _entries_by_column(self._columns)  # the CPU kernel's order of reading each row
        self._defs_t = torch.from_numpy(self.definitions).to(device)
        self._gpu_res = None
        if device.type == "cuda" and _faiss_gpu_available():
            import faiss

            self._gpu_res = faiss.StandardGpuResources()
        elif device.type == "cuda":
            log.warning("faiss has no GPU support here; similarities are computed with torch on %s", device)

    def similarities(self, emb: torch.Tensor) -> torch.Tensor:
        """(W, n) float32 cosines z(e, s) on the ranker's device."""
        z = self._distinct_similarities(emb)
        return z if self._expand is None else z.index_select(1, self._expand)

    @property
    def n_distinct(self) -> int:
        """Columns of the similarities computed: the distinct definition embeddings."""
        return len(self.definitions)

    def _distinct_similarities(self, emb: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(W, n_distinct) cosines; on the CPU written into `out` (a contiguous float32 tensor) when given."""
        if self.device.type == "cuda":
            emb = emb.to(self.device, torch.float32).contiguous()
            if self._gpu_res is not None:
                import faiss
                import faiss.contrib.torch_utils  # noqa: F401 - lets faiss take torch GPU tensors

                return faiss.pairwise_distance_gpu(self._gpu_res, emb, self._defs_t,
                                                   metric=faiss.METRIC_INNER_PRODUCT)
            prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                return emb @ self._defs_t.T
            finally:
                torch.backends.cuda.matmul.allow_tf32 = prev
        import faiss

        emb_np = np.ascontiguousarray(emb.detach().cpu().numpy(), dtype=np.float32)
        if out is not None:  # what faiss.pairwise_distances computes for inner products (numpy's matmul), in place
            np.matmul(emb_np, self.definitions.T, out=out.numpy())
            return out
        return torch.from_numpy(faiss.pairwise_distances(emb_np, self.definitions, metric=faiss.METRIC_INNER_PRODUCT))

    def rank(self, emb: torch.Tensor, top_k: int, out_t: torch.Tensor | None = None,
             z_out: torch.Tensor | None = None) -> Ranking:
        """The ranking of each row of `emb` against T. On the CPU with the kernels, the counts are written
        synset-major (rank_less is then a transposed view of an (n, W) array: `out_t` when given, a caller's
        reused buffer), the cosines into `z_out` ((W, n_distinct) float32) when given, and duplicate
        definitions are read through their shared column, not expanded."""
        if self.device.type == "cpu" and load_kernels() is not None:
            z = self._distinct_similarities(emb, z_out).numpy()
            return _rank_cpu_kernels(load_kernels(), z, self._columns, top_k, out_t, self._entries)
        return rank_from_similarities(self.similarities(emb), top_k)


def rank_from_similarities(z: torch.Tensor, top_k: int) -> Ranking:
    """Tie-aware strict-less counts for every entry of each row, plus the top-k by similarity."""
    if z.device.type == "cpu":
        return _rank_cpu(z.numpy(), top_k)
    n = z.shape[1]
    values, order = torch.sort(z, dim=1)  # ascending
    positions = torch.arange(n, device=z.device).expand_as(order)
    new_value = torch.ones_like(values, dtype=torch.bool)
    new_value[:, 1:] = values[:, 1:] != values[:, :-1]
    # For each sorted position, the first position holding the same value = count of smaller values.
    run_start = torch.where(new_value, positions, torch.zeros_like(positions)).cummax(dim=1).values
    rank_less = torch.empty_like(order, dtype=torch.int32)
    rank_less.scatter_(1, order, run_start.to(torch.int32))
    k = min(top_k, n)
    top_ids = order[:, -k:].flip(1)
    top_rank_less = run_start[:, -k:].flip(1).to(torch.int32)
    return Ranking(rank_less, top_ids, top_rank_less)


def _rank_rows_numpy(z: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = z.shape[1]
    order = np.argsort(z, axis=1)  # ascending
    values = np.take_along_axis(z, order, axis=1)
    positions = np.broadcast_to(np.arange(n, dtype=np.int32), order.shape)
    new_value = np.ones(values.shape, bool)
    new_value[:, 1:] = values[:, 1:] != values[:, :-1]
    run_start = np.maximum.accumulate(np.where(new_value, positions, 0), axis=1).astype(np.int32)
    rank_less = np.empty_like(run_start)
    np.put_along_axis(rank_less, order, run_start, axis=1)
    k = min(top_k, n)
    return rank_less, order[:, -k:][:, ::-1], run_start[:, -k:][:, ::-1]


def _rank_cpu(z: np.ndarray, top_k: int) -> Ranking:
    """The CPU path: with numba, each row is sorted once by a radix sort on the cosines' bits
    (cpu_kernels.rank_rows) and one pass over the sorted row gives every count and the top-k. Where two
    of a row's k + 1 highest cosines are equal, that row's top-k comes from numpy's argsort, as before,
    so that ties keep their former order. Without numba: numpy's argsort and array passes (about three
    times the CPU time; the same results)."""
    kernels = load_kernels()
    if kernels is not None and z.dtype == np.float32:
        return _rank_cpu_kernels(kernels, np.ascontiguousarray(z), np.arange(z.shape[1], dtype=np.int64), top_k)
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, min(torch.get_num_threads(), len(z) // 64 or 1))
    if threads == 1:
        parts = [_rank_rows_numpy(z, top_k)]
    else:
        chunks = np.array_split(np.arange(len(z)), threads)
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(lambda idx: _rank_rows_numpy(z[idx[0]:idx[-1] + 1], top_k), chunks))
    rank_less, top_ids, top_rank = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return Ranking(torch.from_numpy(rank_less), torch.from_numpy(np.ascontiguousarray(top_ids)).long(),
                   torch.from_numpy(np.ascontiguousarray(top_rank)))


#: Rows of counts written at once per thread by the CPU ranking, then copied synset-major (64 rows of 7,343
#: synsets: 1.8 MB).
KEY_ROWS = 64


def _entries_by_column(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(synsets, their columns) listed by column: synset synsets[e] reads z[:, columns[e]] (rank_rows' entries)."""
    synsets = np.argsort(columns, kind="stable")
    return np.ascontiguousarray(synsets, dtype=np.int64), np.ascontiguousarray(columns[synsets], dtype=np.int64)


def _rank_cpu_kernels(kernels, z: np.ndarray, columns: np.ndarray, top_k: int, out_t: torch.Tensor | None = None,
                      entries: tuple[np.ndarray, np.ndarray] | None = None) -> Ranking:
    """Ranks of z[:, columns] by the rank_rows kernel (rows split across threads), counts synset-major;
    `entries`: _entries_by_column(columns), when kept by the caller. Rows whose k + 1 highest cosines tie
    take numpy's order, as the former code."""
    synsets, by_column = entries if entries is not None else _entries_by_column(columns)
    rows, n = z.shape[0], len(columns)
    k = min(top_k, n)
    if out_t is None:
        out_t = torch.empty(n, rows, dtype=torch.int32)
    assert out_t.shape == (n, rows) and out_t.dtype == torch.int32 and out_t.is_contiguous()
    rank_t = out_t.numpy()
    top_ids = np.empty((rows, k), np.int64)
    top_rank = np.empty((rows, k), np.int32)
    tied = np.empty(rows, np.bool_)

    def run(first: int, last: int) -> None:
        block = np.empty((min(KEY_ROWS, last - first), n), np.int32)  # 1.8 MB per thread
        kernels.rank_rows(z, synsets, by_column, block, rank_t, top_ids, top_rank, tied, first, last)

    split_rows(rows, run)
    for i in np.flatnonzero(tied):  # equal cosines among the top: numpy's order, as the former code
        ids = np.argsort(z[i, columns])[-k:][::-1]
        top_ids[i] = ids
        top_rank[i] = rank_t[ids, i]
    return Ranking(out_t.T, torch.from_numpy(top_ids), torch.from_numpy(top_rank))
