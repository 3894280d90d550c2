"""A deliberately naive reference implementation of Concept Visualization (Giulivi & Boracchi, 2024).

Written straight from the equations, sharing no code with convis_db.engine except what is not part of
them (the working-image resize, which the tests take from `ConceptEngine.working_image`):

* the window lattice from its definition: corners every `stride` pixels on both axes, starting at
  -(large - stride) ("equal": every pixel covered by as many windows) or at 0 ("origin": the layout of
  databases made before schema 005), up to the last corner that still covers the last pixel;
* one window at a time: each patch is cut into its own zero-filled tensor (zero is the model's mean
  colour after normalisation, past every border), resized alone and encoded alone (a batch of one);
* one concept at a time: cosines in numpy float64, rank_sim(e, s) = |{s' : z(e, s') < z(e, s)}| / |T|
  counted for one s, max_rank_sim as a python max over the closure's descendants;
* saliency maps by box accumulation: a python loop over windows, and over the pixels of each window's
  large patch, adding into sum and count arrays; the map is sum / count.

Slow, but small images and a small T keep it to a fraction of a second per map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


# -- windows and patches --------------------------------------------------------------------------
def axis_corners(length: int, stride: int, large: int, layout: str) -> list[int]:
    """Corners on one axis: from -(large - stride) ("equal") or 0 ("origin"), every `stride` pixels, while
    the corner still covers the last pixel (corner <= length - 1)."""
    first = -(large - stride) if layout == "equal" else 0
    assert layout in ("equal", "origin"), layout
    corners = []
    c = first
    while c <= length - 1:
        corners.append(c)
        c += stride
    return corners


def window_corners(height: int, width: int, stride: int, large: int | None = None,
                   layout: str = "equal") -> list[tuple[int, int]]:
    """Top-left corners (x0, y0), row-major."""
    if layout == "origin":
        # The old definition as it was written: (c * stride, r * stride), r < ceil(H / s), c < ceil(W / s).
        return [(c * stride, r * stride) for r in range(math.ceil(height / stride))
                for c in range(math.ceil(width / stride))]
    assert large is not None, "the equal layout's corners depend on the large side"
    return [(x0, y0) for y0 in axis_corners(height, stride, large, layout)
            for x0 in axis_corners(width, stride, large, layout)]


def cut_patch(img: torch.Tensor, x0: int, y0: int, side: int, out_size: int) -> torch.Tensor:
    """The (3, out, out) patch of side `side` at (x0, y0) (may be negative) of a normalised (3, H, W) image.

    The part past any border is 0 (the model's mean colour in normalised space). The patch is resized
    bicubically (align_corners=False, antialiased when shrinking) to the model's input size.
    """
    _, height, width = img.shape
    patch = torch.zeros(3, side, side, dtype=torch.float32)
    ya, xa = max(y0, 0), max(x0, 0)
    y1, x1 = min(y0 + side, height), min(x0 + side, width)
    if y1 > ya and x1 > xa:
        patch[:, ya - y0: y1 - y0, xa - x0: x1 - x0] = img[:, ya:y1, xa:x1].float().cpu()
    if side == out_size:
        return patch
    return F.interpolate(patch[None], size=(out_size, out_size), mode="bicubic", align_corners=False,
                         antialias=side > out_size)[0]


def encode_one(model, patch: torch.Tensor) -> np.ndarray:
    """E_I of a single patch, L2-normalised, in float64."""
    with torch.inference_mode():
        feats = model.encode_image_batch(patch[None].to(model.device))
    v = feats[0].double().cpu().numpy()
    return v / np.linalg.norm(v)


def window_embeddings(model, img: torch.Tensor, stride: int, small: int, large: int, layout: str = "equal"
                      ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Corners and (W, D) float64 embeddings e = (E_I(S) + E_I(L)) / 2, one window at a time; the small
    patch S shares the large patch L's top-left corner."""
    _, height, width = img.shape
    corners = window_corners(height, width, stride, large, layout)
    rows = []
    for x0, y0 in corners:
        e_small = encode_one(model, cut_patch(img, x0, y0, small, model.image_size))
        e_large = encode_one(model, cut_patch(img, x0, y0, large, model.image_size))
        rows.append((e_small + e_large) / 2.0)
    return corners, np.array(rows, dtype=np.float64)


# -- ranks ------------------------------------------------------------------------------------------
def cosines(e: np.ndarray, definitions: np.ndarray) -> np.ndarray:
    """z(e, s) for every s: float64 cosines with the definition embeddings d_s."""
    d = np.asarray(definitions, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    return (d @ e) / (np.linalg.norm(d, axis=1) * np.linalg.norm(e))


def rank_sim(z: np.ndarray, s: int) -> float:
    """|{s' : z(e, s') < z(e, s)}| / |T| (strict <)."""
    return float(np.count_nonzero(z < z[s])) / len(z)


def max_rank_sim(z: np.ndarray, descendants: Sequence[int]) -> float:
    """max over s in descendants(X) (X included) of rank_sim(e, s)."""
    return max(rank_sim(z, int(s)) for s in descendants)


# -- maps -----------------------------------------------------------------------------------------
def saliency_map(values: Sequence[float], corners: Sequence[tuple[int, int]], large: int,
                 height: int, width: int) -> np.ndarray:
    """y[i, j] = mean of values[w] over windows w whose large box [x0, x0+large) x [y0, y0+large) holds (i, j)."""
    sums = np.zeros((height, width), np.float64)
    counts = np.zeros((height, width), np.int64)
    for (x0, y0), v in zip(corners, values):
        for i in range(max(y0, 0), min(y0 + large, height)):
            for j in range(max(x0, 0), min(x0 + large, width)):
                sums[i, j] += v
                counts[i, j] += 1
    if (counts == 0).any():
        raise AssertionError(f"{int((counts == 0).sum())} pixels are covered by no window")
    return sums / counts


def saliency_maps(values: np.ndarray, corners: Sequence[tuple[int, int]], large: int,
                  height: int, width: int) -> np.ndarray:
    """(H, W, K) maps of K concepts at once: the same accumulation, a K-vector per pixel (row by row)."""
    values = np.asarray(values, dtype=np.float64)
    sums = np.zeros((height, width, values.shape[1]), np.float64)
    counts = np.zeros((height, width), np.int64)
    for (x0, y0), v in zip(corners, values):
        xa, x1 = max(x0, 0), min(x0 + large, width)
        for i in range(max(y0, 0), min(y0 + large, height)):
            sums[i, xa:x1] += v
            counts[i, xa:x1] += 1
    if (counts == 0).any():
        raise AssertionError(f"{int((counts == 0).sum())} pixels are covered by no window")
    return sums / counts[..., None]


# -- the whole method -----------------------------------------------------------------------------
@dataclass
class NaiveExplanation:
    height: int
    width: int
    corners: list[tuple[int, int]]
    embeddings: np.ndarray   # (W, D) float64
    z: np.ndarray            # (W, n) float64 cosines
    large: int

    @property
    def n(self) -> int:
        return self.z.shape[1]

    def rank_sim(self, w: int, s: int) -> float:
        return rank_sim(self.z[w], s)

    def window_values(self, descendants: Sequence[int]) -> list[float]:
        """max_rank_sim(e_w, X) for every window, X given by its descendants (itself included)."""
        return [max_rank_sim(self.z[w], descendants) for w in range(len(self.corners))]

    def concept_map(self, descendants: Sequence[int]) -> np.ndarray:
        """y_X over the working image (pass [X] alone for the rank_sim map)."""
        return saliency_map(self.window_values(descendants), self.corners, self.large, self.height, self.width)

    def all_maps(self, descendants: Mapping[int, Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, n) maps of every synset: y_X (max_rank_sim) and the rank_sim map of X alone."""
        n = self.n
        windows = range(len(self.corners))
        own = np.array([[self.rank_sim(w, s) for s in range(n)] for w in windows])
        best = np.array([[max(own[w, int(d)] for d in descendants[s]) for s in range(n)] for w in windows])
        return (saliency_maps(best, self.corners, self.large, self.height, self.width),
                saliency_maps(own, self.corners, self.large, self.height, self.width))

    def score_tables(self, descendants: Mapping[int, Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(score, self_score) per synset: the maxima over pixels of the two maps."""
        best, own = self.all_maps(descendants)
        return best.max(axis=(0, 1)), own.max(axis=(0, 1))


def explain(model, img: torch.Tensor, definitions: np.ndarray, stride: int, small: int, large: int,
            layout: str = "equal") -> NaiveExplanation:
    """Encode every window of a normalised working image one by one and compute its cosines."""
    _, height, width = img.shape
    corners, emb = window_embeddings(model, img, stride, small, large, layout)
    z = np.array([cosines(e, definitions) for e in emb])
    return NaiveExplanation(height, width, corners, emb, z, large)


def from_embeddings(embeddings: np.ndarray, definitions: np.ndarray, height: int, width: int, stride: int,
                    large: int, layout: str = "equal") -> NaiveExplanation:
    """The same from given window embeddings (row-major windows), e.g. the ones stored in a database."""
    corners = window_corners(height, width, stride, large, layout)
    assert len(corners) == len(embeddings), (len(corners), len(embeddings))
    emb = np.asarray(embeddings, dtype=np.float64)
    z = np.array([cosines(e, definitions) for e in emb])
    return NaiveExplanation(height, width, corners, emb, z, large)


def descendants_from_closure(con) -> dict[int, np.ndarray]:
    """descendants[X] = every synset below X in T, X included, from the closure table."""
    out: dict[int, list[int]] = {}
    for anc, desc in con.execute("SELECT ancestor_id, descendant_id FROM closure").fetchall():
        out.setdefault(int(anc), []).append(int(desc))
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in out.items()}


def min_rank_margin(z: np.ndarray) -> float:
    """The smallest gap between distinct cosines of any window: below ~1e-6, float32 and float64 ranks
    may legitimately disagree."""
    gaps = np.diff(np.sort(z, axis=1), axis=1)
    gaps = gaps[gaps > 0]
    return float(gaps.min()) if gaps.size else math.inf


# -- image level ----------------------------------------------------------------------------------
def image_level_counts(x: np.ndarray, definitions: np.ndarray, descendants: Mapping[int, Sequence[int]]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(|T| * rank_sim(x, s), |T| * max_rank_sim(x, s)) for every s, of a whole-image embedding x."""
    z = cosines(x, definitions)
    n = len(z)
    own = np.array([np.count_nonzero(z < z[s]) for s in range(n)], dtype=np.int64)
    best = np.array([max(own[int(d)] for d in descendants[s]) for s in range(n)], dtype=np.int64)
    return own, best
