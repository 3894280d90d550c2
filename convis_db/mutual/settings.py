"""The knobs of the mutual-knowledge method, with the defaults documented in docs/mutual.md.

Values taken from the authors' code are marked (code); the others are choices made where neither the
paper text we could read nor the released code fixes them (ours).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from convis_db.errors import UsageError

#: CLIP's single zero-shot prompt; configurable (several templates are averaged, as CLIP's ensembles).
DEFAULT_TEMPLATE = "a photo of a {}."

DECOMPOSITIONS = ("pca", "kmeans")


@dataclass(frozen=True)
class MutualSettings:
    decomposition: str = "pca"        # "pca" (eigendecomposition of the patch covariance) or "kmeans" (code)
    n_concepts: int = 5               # K visual concepts (ours: the authors' notebook value is not public)
    foreground: bool = True           # split off the foreground first, as the code does (code)
    foreground_method: str = "graph"  # "graph" (affinity eigenvectors, the paper's ablation winner) or "pca" (code)
    foreground_threshold: float = 0.5  # on the min-max scaled first principal component (ours)
    initial_topk: int = 100           # descriptors kept per visual concept before the intersection (code)
    topk: int = 3                     # textual concepts per visual concept (code)
    optimal_transport: bool = True    # Sinkhorn assignment of the shared descriptors (code, use_ot=True)
    sinkhorn_lambda: float = 1.0      # epsilon = 1 / lambda (code)
    sinkhorn_iters: int = 1000        # (code)
    logit_scale: float = 2.5          # cosines are multiplied by this before Sinkhorn and as scores (code)
    language_topk: int = 20           # descriptors around the predicted class's text embedding (ours)
    kmeans_seed: int = 0              # k-means initialisation seed (ours: deterministic output)

    def __post_init__(self):
        if self.decomposition not in DECOMPOSITIONS:
            raise UsageError(f"unknown decomposition {self.decomposition!r}; choose one of: {', '.join(DECOMPOSITIONS)}.")
        if self.foreground_method not in ("graph", "pca"):
            raise UsageError(f"unknown foreground method {self.foreground_method!r}; choose graph or pca.")
        for name in ("n_concepts", "initial_topk", "topk", "language_topk", "sinkhorn_iters"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)}).")
        if not 0.0 <= self.foreground_threshold < 1.0:
            raise UsageError(f"foreground-threshold must be in [0, 1) (got {self.foreground_threshold}).")
        if self.sinkhorn_lambda <= 0:
            raise UsageError(f"sinkhorn-lambda must be positive (got {self.sinkhorn_lambda}).")

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)
