"""max_rank_sim for every concept at once: the max of rank_sim over each synset and its descendants.

The maxima travel up T edge by edge, level by level (levels by the parent's height above the leaves,
so children are final before any parent reads them). Every parent of a DAG node receives it. Work
is done synset-major (one contiguous row of window values per synset), so each level is one gather
of child rows and one scatter-max into parent rows.
"""

from __future__ import annotations

import numpy as np
import torch

from convis_db.engine.kernels import load_kernels, split_rows


class Propagator:
    def __init__(self, levels: list[tuple[np.ndarray, np.ndarray]], device: torch.device):
        self.levels = [(torch.from_numpy(p).to(device), torch.from_numpy(c).to(device)) for p, c in levels]
        # On the CPU, one numba pass over the edges (level by level, children first) does the same
        # maxima with vectorised row maxima instead of torch's scatter_reduce.
        self._edges = (np.concatenate([np.asarray(p, np.int64) for p, _ in levels] or [np.zeros(0, np.int64)]),
                       np.concatenate([np.asarray(c, np.int64) for _, c in levels] or [np.zeros(0, np.int64)]))

    def max_over_descendants_t(self, values_t: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """(n, W) synset-major -> (n, W) where row s holds the max over s and all its descendants.
        `in_place`: overwrite `values_t` (contiguous) instead of a copy (no fresh 50 MB per image)."""
        if in_place and not values_t.is_contiguous():
            raise ValueError("in-place propagation needs a contiguous (n, W) tensor")
        kernels = load_kernels() if values_t.device.type == "cpu" else None
        if kernels is not None:
            out = values_t if in_place else values_t.contiguous().clone()
            arr = out.numpy()
            up, down = self._edges
            split_rows(arr.shape[1], lambda a, b: kernels.propagate_max(arr, up, down, a, b))
            return out
        out = values_t if in_place else values_t.clone()
        width = out.shape[1]
        for parents, children in self.levels:
            out.scatter_reduce_(0, parents[:, None].expand(-1, width), out[children], reduce="amax",
                                include_self=True)
        return out

    def max_over_descendants(self, values: torch.Tensor) -> torch.Tensor:
        """(W, n) window-major convenience wrapper around max_over_descendants_t."""
        return self.max_over_descendants_t(values.T.contiguous()).T
