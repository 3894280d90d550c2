"""Turn a saliency map into a picture: the paper's white mask, or a colour-map overlay.

Display maps are min-max normalised (the raw values of a concept cluster near 1, since a rank is a
fraction of |T|); the raw values are what `map --npy` writes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

STYLES = ("mask", "heatmap")

# A perceptually ordered colour map (viridis), 9 anchor colours interpolated to 256 entries.
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], np.float64)


def _lut() -> np.ndarray:
    xs = np.linspace(0, 1, len(_VIRIDIS))
    grid = np.linspace(0, 1, 256)
    return np.stack([np.interp(grid, xs, _VIRIDIS[:, c]) for c in range(3)], axis=1)


def normalise_map(saliency: np.ndarray) -> np.ndarray:
    """Min-max normalised to [0, 1]; a flat map keeps its raw level (clipped to [0, 1]).

    Flat maps are common near the root of T: the best descendant of entity.n.01 is every window's top
    synset, so its map is (|T| - 1) / |T| everywhere. Stretching would draw it as absent (0); drawn at
    its level, the concept shows as present everywhere, which is what the map says.
    """
    lo, hi = float(saliency.min()), float(saliency.max())
    if hi - lo < 1e-12:
        return np.full(saliency.shape, np.clip(hi, 0.0, 1.0), dtype=np.float32)
    return ((saliency - lo) / (hi - lo)).astype(np.float32)


def resize_map(saliency: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a working-resolution map to (height, width)."""
    if saliency.shape == (height, width):
        return saliency
    t = torch.from_numpy(np.ascontiguousarray(saliency, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def render(image_rgb: np.ndarray, saliency: np.ndarray, style: str = "mask", threshold: float = 0.0) -> np.ndarray:
    """(H, W, 3) uint8 picture of `saliency` over `image_rgb` (any sizes; the map is resized to the image).

    mask: each pixel blends from white (saliency 0) to the image (saliency 1), as in the paper.
    heatmap: the image under a half-transparent viridis colour map.
    threshold: normalised values below it are shown as 0.
    """
    if style not in STYLES:
        raise ValueError(f"style {style!r} is not one of {STYLES}")
    h, w = image_rgb.shape[:2]
    a = resize_map(normalise_map(saliency), w, h)
    if threshold > 0:
        a = np.where(a >= threshold, a, 0.0)
    img = image_rgb.astype(np.float32)
    if style == "mask":
        out = a[..., None] * img + (1.0 - a[..., None]) * 255.0
    else:
        colours = _lut()[np.clip((a * 255).astype(np.int64), 0, 255)]
        out = 0.5 * img + 0.5 * colours
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
