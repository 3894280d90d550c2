"""max_rank_sim for every concept at once: the max of rank_sim over each synset and its descendants.

The maxima travel up T edge by edge, level by level (levels by the parent's height above the leaves,
so children are final before any parent reads them). Every parent of a DAG node receives it.
"""

from __future__ import annotations

import numpy as np
import torch


class Propagator:
    def __init__(self, levels: list[tuple[np.ndarray, np.ndarray]], device: torch.device):
        self.levels = [(torch.from_numpy(p).to(device), torch.from_numpy(c).to(device)) for p, c in levels]

    def max_over_descendants(self, values: torch.Tensor) -> torch.Tensor:
        """(W, n) -> (W, n) where column s holds the max over s and all its descendants."""
        out = values.clone()
        rows = out.shape[0]
        for parents, children in self.levels:
            out.scatter_reduce_(1, parents.expand(rows, -1), out[:, children], reduce="amax", include_self=True)
        return out
