"""Embedding a visual concept: the image with the concept's region circled in red, through CLIP.

The authors describe a region by visual prompting (CLIP attends to what a red ellipse circles): the
region's largest connected part gets an ellipse, and three versions of the image are encoded: the
ellipse drawn on the image, the same with everything outside the ellipse in grayscale, and with it
blurred. The concept's embedding is the mean of the three L2-normalised image embeddings.

Choices here (docs/mutual.md): the ellipse is the one with the region's centroid and second moments
(a filled ellipse with semi-axes a, b has coordinate variances a^2/4, b^2/4), not OpenCV's
least-squares fit of the contour; the line is 1 pixel wide per 224 input pixels; the blur is Gaussian
with sigma 2 (what OpenCV uses for the authors' 11x11 kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from convis_db.mutual.patches import to_model_batch

PROMPT_COLOUR = (255, 0, 0)
BLUR_SIGMA = 2.0
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Ellipse:
    cx: float          # centre, pixels of the image it was fitted in
    cy: float
    a: float           # semi-axes (a >= b)
    b: float
    angle: float       # radians, direction of the a axis from +x towards +y

    def points(self, n: int = 72, sx: float = 1.0, sy: float = 1.0) -> list[tuple[float, float]]:
        """n points along the outline, optionally scaled to another image size."""
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        out = []
        for i in range(n):
            t = 2 * math.pi * i / n
            x = self.a * math.cos(t) * ca - self.b * math.sin(t) * sa
            y = self.a * math.cos(t) * sa + self.b * math.sin(t) * ca
            out.append(((self.cx + x) * sx, (self.cy + y) * sy))
        return out


def upscale_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (gh, gw) patch mask at (height, width) pixels, nearest neighbour."""
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return np.asarray(img) > 127


def largest_region(mask: np.ndarray) -> np.ndarray:
    labelled, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == int(np.argmax(sizes)) + 1


def fit_ellipse(mask: np.ndarray) -> Ellipse:
    """The moment ellipse of a pixel mask (its largest 8-connected part)."""
    region = largest_region(mask)
    ys, xs = np.nonzero(region)
    if len(xs) == 0:
        raise ValueError("empty region")
    cx, cy = float(xs.mean()), float(ys.mean())
    cov = np.cov(np.stack([xs, ys]).astype(np.float64), bias=True) if len(xs) > 1 else np.zeros((2, 2))
    # a single pixel row/column has zero variance across it: a pixel is 1 wide (variance 1/12)
    cov = cov + np.eye(2) / 12.0
    vals, vecs = np.linalg.eigh(cov)
    a, b = 2.0 * math.sqrt(vals[1]), 2.0 * math.sqrt(vals[0])
    angle = math.atan2(vecs[1, 1], vecs[0, 1])
    return Ellipse(cx, cy, a, b, angle)


def line_width(size: int) -> int:
    return max(1, int(round(size / 224)))


def visual_prompts(image: np.ndarray, ellipse: Ellipse) -> list[np.ndarray]:
    """The three prompted versions of an (S, S, 3) uint8 image: red ellipse, grayscale and blurred outside."""
    h, w = image.shape[:2]
    pts = ellipse.points()
    inside_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(inside_img).polygon(pts, fill=255)
    inside = (np.asarray(inside_img) > 127)[..., None]
    pil = Image.fromarray(image)
    gray = np.repeat(np.asarray(pil.convert("L"))[..., None], 3, axis=2)
    blurred = np.asarray(pil.filter(ImageFilter.GaussianBlur(BLUR_SIGMA)))
    versions = [image, np.where(inside, image, gray), np.where(inside, image, blurred)]
    out = []
    for v in versions:
        canvas = Image.fromarray(np.ascontiguousarray(v, dtype=np.uint8))
        ImageDraw.Draw(canvas).line(pts + [pts[0]], fill=PROMPT_COLOUR, width=line_width(w))
        out.append(np.asarray(canvas))
    return out


@torch.inference_mode()
def concept_embeddings(model, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[Ellipse]]:
    """((C, E) float32 mean prompted embeddings, ellipses in input pixels) of the concepts in `labels`.

    `image` is the square model input (S, S, 3) uint8; `labels` the (gh, gw) concept grid (-1 background).
    Rows are not re-normalised (the authors score the mean of unit vectors against the descriptors).
    """
    n = int(labels.max()) + 1 if (labels >= 0).any() else 0
    if n == 0:
        return np.zeros((0, model.embed_dim), np.float32), []
    h, w = image.shape[:2]
    ellipses = [fit_ellipse(upscale_mask(labels == c, w, h)) for c in range(n)]
    prompted = [v for e in ellipses for v in visual_prompts(image, e)]          # concept-major: c0v0 c0v1 c0v2 c1v0 ...
    emb = model.encode_image_batch(to_model_batch(model, prompted)).float().cpu().numpy()
    return emb.reshape(n, 3, -1).mean(axis=1).astype(np.float32), ellipses
