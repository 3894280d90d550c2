"""Visual concepts: the image's patch tokens split into a few spatial parts (regions of the image).

As in the authors' code, the foreground is found first and then divided into K parts:

* foreground: a decomposition of all patch tokens, either the graph decomposition (the eigenvectors
  of the tokens' cosine-affinity matrix A = X X^T, X the L2-normalised tokens, i.e. X's left singular
  vectors; the second one splits the graph, as in spectral methods) or PCA (the first principal
  component). Each component's sign is set so that its positive side is the minority of patches (a
  component more than half positive and not all positive is negated); patches where the foreground
  component is positive are foreground candidates (the authors' notebook: its raw sign), or, with a
  numeric `threshold`, patches whose component min-max scaled to [0, 1] reaches it; the largest
  8-connected component of the candidates is kept, plus the second largest when it has at least 5
  patches.
* parts by eigendecomposition: PCA with K components of the foreground tokens, min-max scaled per
  component; each patch belongs to the component where it scores highest (argmax).
* parts by k-means: k-means with K clusters of the L2-normalised foreground tokens.

Several images can be decomposed together (one PCA / one k-means over all their patches), as the
authors do for a set of images of one class; `mutual IMAGE` decomposes its image alone.

PCA here is the eigendecomposition of the token covariance, computed by an SVD of the centred tokens;
the sign of each principal axis is fixed (its largest loading positive) and the axes come in order of
decreasing variance, so that results do not depend on the LAPACK build. What cannot be fixed is a
patch whose two best components (or a component and the threshold) differ by float noise: the
tokens themselves differ in their last bits between CPUs (AVX2 vs AVX-512 kernels), and such a patch
may change part there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2

#: A principal axis whose variance is below this share of the largest one's is float noise, not a component.
NULL_VARIANCE = 1e-12
#: The second largest foreground component is kept when it has at least this many patches (code).
SECOND_COMPONENT_MIN = 5
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class Decomposition:
    labels: np.ndarray        # (gh, gw) int: -1 background, else the visual concept 0..K'-1
    foreground: np.ndarray    # (gh, gw) bool

    @property
    def n_concepts(self) -> int:
        return int(self.labels.max()) + 1 if (self.labels >= 0).any() else 0

    def mask(self, concept: int) -> np.ndarray:
        return self.labels == concept


def pca_scores(features: np.ndarray, n_components: int) -> np.ndarray:
    """(n, k) projections of the centred rows on the top-k principal axes (signs fixed).

    Axes without variance (below NULL_VARIANCE of the largest: float noise, e.g. the d - n + 1 axes
    left when n < d patches are centred) are not components: their directions are arbitrary, so they
    are dropped (k is at most the rank; all-equal rows give one zero column)."""
    x = features - features.mean(axis=0, keepdims=True)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    rank = int((sv ** 2 > NULL_VARIANCE * sv.max(initial=0.0) ** 2).sum()) if sv.size else 0
    if rank == 0:
        return np.zeros((x.shape[0], 1))
    k = int(min(n_components, rank))
    axes = vt[:k]
    signs = np.sign(axes[np.arange(k), np.argmax(np.abs(axes), axis=1)])
    signs[signs == 0] = 1.0
    return x @ (axes * signs[:, None]).T


def graph_vectors(features: np.ndarray, n_components: int) -> np.ndarray:
    """(n, k) top-k eigenvectors of the cosine affinity X X^T of the rows (left singular vectors of the
    L2-normalised rows), each signed so that its largest entry in magnitude is positive."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    k = int(min(n_components, x.shape[0], x.shape[1]))
    u, _, _ = np.linalg.svd(x, full_matrices=False)
    u = u[:, :k]
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    return u * signs


def minmax_columns(values: np.ndarray) -> np.ndarray:
    """Each column scaled to [0, 1] over the rows (a constant column becomes 0)."""
    lo, hi = values.min(axis=0, keepdims=True), values.max(axis=0, keepdims=True)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return (values - lo) / span


def minority_positive(scores: np.ndarray) -> np.ndarray:
    """Negate components that are positive on more than half (but not all) of the patches."""
    out = scores.copy()
    frac = (out > 0).mean(axis=0)
    flip = (frac > 0.5) & (frac < 1.0)
    out[:, flip] = -out[:, flip]
    return out


def _largest_components(candidates: np.ndarray) -> np.ndarray:
    labelled, n = ndimage.label(candidates, structure=_EIGHT_CONNECTED)
    if n == 0:
        return np.zeros_like(candidates, dtype=bool)
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")
    keep = labelled == order[0] + 1
    if n > 1 and sizes[order[1]] >= SECOND_COMPONENT_MIN:
        keep |= labelled == order[1] + 1
    return keep


FOREGROUND_METHODS = ("graph", "pca")


def foreground_masks(tokens: list[np.ndarray], n_components: int, threshold: float | None,
                     method: str = "graph") -> list[np.ndarray]:
    """(gh, gw) bool foreground of each of several (gh, gw, D) token grids, with one decomposition and
    one min-max scaling over all their patches (images decomposed together); every patch where nothing
    passes. method: "graph" (second affinity eigenvector) or "pca" (first principal component);
    threshold: None for the component's sign (> 0), else a level of the min-max scaled component."""
    d = tokens[0].shape[-1]
    flat = np.concatenate([t.reshape(-1, d) for t in tokens]).astype(np.float64)
    if method == "graph":
        comps, which = graph_vectors(flat, max(2, n_components)), 1
    else:
        comps, which = pca_scores(flat, n_components), 0
    which = min(which, comps.shape[1] - 1)
    signed = minority_positive(comps)
    passes = signed[:, which] > 0 if threshold is None else minmax_columns(signed)[:, which] >= threshold
    out, start = [], 0
    for t in tokens:
        gh, gw = t.shape[:2]
        keep = _largest_components(passes[start:start + gh * gw].reshape(gh, gw))
        out.append(keep if keep.any() else np.ones((gh, gw), dtype=bool))
        start += gh * gw
    return out


def foreground_mask(tokens: np.ndarray, n_components: int, threshold: float | None,
                    method: str = "graph") -> np.ndarray:
    """(gh, gw) bool foreground of (gh, gw, D) tokens; every patch when nothing passes the threshold."""
    return foreground_masks([tokens], n_components, threshold, method)[0]


def _relabel(raw: np.ndarray) -> np.ndarray:
    """Concept ids renumbered 0.. in order of their original index, empty ones dropped."""
    out = np.full(raw.shape, -1, dtype=np.int64)
    for new, old in enumerate(np.unique(raw[raw >= 0])):
        out[raw == old] = new
    return out


def pca_parts(features: np.ndarray, k: int) -> np.ndarray:
    """Part index of each row: argmax over the min-max scaled top-k principal components."""
    if features.shape[0] < 2:
        return np.zeros(features.shape[0], dtype=np.int64)
    return np.argmax(minmax_columns(pca_scores(features, k)), axis=1)


def kmeans_parts(features: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster index of each row: k-means (k-means++ start, 500 Lloyd steps) of the L2-normalised rows."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    k = int(min(k, x.shape[0]))
    if k <= 1:
        return np.zeros(x.shape[0], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty cluster is dropped by _relabel
        _, labels = kmeans2(x, k, iter=500, minit="++", seed=np.random.default_rng(seed))
    return labels.astype(np.int64)


def decompose_together(tokens: list[np.ndarray], method: str = "pca", n_concepts: int = 5, foreground: bool = True,
                       threshold: float | None = None, seed: int = 0,
                       foreground_method: str = "graph") -> list[Decomposition]:
    """Several images' (gh, gw, D) tokens decomposed with one PCA / one k-means over all of them (the
    authors' setting for a set of images of one class); concept ids are then renumbered per image."""
    d = tokens[0].shape[-1]
    fgs = (foreground_masks(tokens, n_concepts, threshold, foreground_method) if foreground
           else [np.ones(t.shape[:2], dtype=bool) for t in tokens])
    fg_feats = np.concatenate([t.reshape(-1, d)[fg.ravel()] for t, fg in zip(tokens, fgs)]).astype(np.float64)
    parts = pca_parts(fg_feats, n_concepts) if method == "pca" else kmeans_parts(fg_feats, n_concepts, seed)
    out, start = [], 0
    for t, fg in zip(tokens, fgs):
        gh, gw = t.shape[:2]
        n_fg = int(fg.sum())
        raw = np.full(gh * gw, -1, dtype=np.int64)
        raw[fg.ravel()] = parts[start:start + n_fg]
        start += n_fg
        out.append(Decomposition(labels=_relabel(raw.reshape(gh, gw)), foreground=fg))
    return out


def decompose(tokens: np.ndarray, method: str = "pca", n_concepts: int = 5, foreground: bool = True,
              threshold: float | None = None, seed: int = 0, foreground_method: str = "graph") -> Decomposition:
    """Split one image's (gh, gw, D) patch tokens into at most `n_concepts` visual concepts."""
    return decompose_together([tokens], method, n_concepts, foreground, threshold, seed, foreground_method)[0]
