"""The knobs of the mutual-knowledge method, with the defaults documented in docs/mutual.md.

Values taken from the authors' code (utils.py) are marked (code), those from the settings of their
public notebook (clip-interpret-mi.ipynb, as the issue reviewing it reports them) (notebook); the others
are choices made where neither fixes them (ours).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from convis_db.errors import UsageError

#: CLIP's single zero-shot prompt; configurable (several templates are averaged, as CLIP's ensembles).
DEFAULT_TEMPLATE = "a photo of a {}."

DECOMPOSITIONS = ("pca", "kmeans")


#: How the single-image AUC is computed: the MI curve of the chosen decomposition ("single"), or the
#: authors' notebook's mean of the PCA and k-means curves ("pca+kmeans").
AUC_MODES = ("single", "pca+kmeans")

#: A language top-k above this share of the bank is warned about: nearly every text then counts as
#: "around the class", and MI measures the bank's size more than shared knowledge.
LANGUAGE_SHARE_WARNING = 0.25


@dataclass(frozen=True)
class MutualSettings:
    decomposition: str = "pca"        # "pca" (eigendecomposition of the patch covariance) or "kmeans" (code)
    n_concepts: int = 5               # K visual concepts (ours: the notebook leaves K to the user)
    foreground: bool = True           # split off the foreground first, as the code does (code)
    foreground_method: str = "graph"  # "graph" (affinity eigenvectors: the code's "svd"; the paper's ablation winner) or "pca"
    #: None: a patch is foreground where the foreground component is positive, by its raw sign (the
    #: notebook's threshold_by_negative); a number in [0, 1): where the min-max scaled component reaches it.
    foreground_threshold: float | None = None
    initial_topk: int = 500           # candidates kept per visual concept before the intersection (notebook)
    #: Relevance filter on the shared candidates: keep those whose cos(text, image) exceeds the mean over
    #: the candidates minus this offset (notebook: 0.02); None turns the filter off.
    relevance_offset: float | None = 0.02
    topk: int = 3                     # textual concepts per visual concept (code)
    optimal_transport: bool = True    # Sinkhorn assignment of the shared descriptors (code, use_ot=True)
    sinkhorn_lambda: float = 1.0      # epsilon = 1 / lambda (code)
    sinkhorn_iters: int = 1000        # (code)
    logit_scale: float = 2.5          # cosines are multiplied by this before Sinkhorn and as scores (code)
    language_topk: int = 50           # descriptors around the predicted class's text embedding (notebook)
    kmeans_seed: int = 0              # k-means initialisation seed (ours: deterministic output)
    auc: str = "single"               # "single" or "pca+kmeans" (the notebook's single-image AUC)

    def __post_init__(self):
        if self.decomposition not in DECOMPOSITIONS:
            raise UsageError(f"unknown decomposition {self.decomposition!r}; choose one of: {', '.join(DECOMPOSITIONS)}.")
        if self.foreground_method not in ("graph", "pca"):
            raise UsageError(f"unknown foreground method {self.foreground_method!r}; choose graph or pca.")
        if self.auc not in AUC_MODES:
            raise UsageError(f"unknown AUC mode {self.auc!r}; choose one of: {', '.join(AUC_MODES)}.")
        for name in ("n_concepts", "initial_topk", "topk", "language_topk", "sinkhorn_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
                raise UsageError(f"{name} must be a whole number of at least 1 (got {value!r}).")
        if self.foreground_threshold is not None and not (
                isinstance(self.foreground_threshold, (int, float)) and 0.0 <= self.foreground_threshold < 1.0):
            raise UsageError(f"foreground_threshold must be None (the component's sign) or in [0, 1) "
                             f"(got {self.foreground_threshold!r}).")
        if self.relevance_offset is not None and not (
                isinstance(self.relevance_offset, (int, float)) and math.isfinite(self.relevance_offset)
                and self.relevance_offset >= 0):
            raise UsageError(f"relevance_offset must be None (no filter) or a number >= 0 (got {self.relevance_offset!r}).")
        if self.sinkhorn_lambda <= 0:
            raise UsageError(f"sinkhorn-lambda must be positive (got {self.sinkhorn_lambda}).")

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)
