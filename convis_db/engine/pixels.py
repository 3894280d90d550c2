"""Working-image pixels to original-image pixels: the one home of the conversion.

Windows, maps and peaks live in working pixels (the image resized to about max_pixels); users see
original pixels. With scale = original / working (`images.scale`):

* a point (a peak) maps to the original pixel that holds the centre of its working pixel,
  floor((v + 0.5) * scale). This is, exactly, what the SQL views have always computed as
  round((v + 0.5) * scale - 0.5) with DuckDB's round half away from zero; Python's round() rounds
  halves to even and gave another pixel whenever (v + 0.5) * scale is a whole number (scale 2, say);
* a box [v0, v1) maps to [floor(v0 * scale), ceil(v1 * scale)) clipped to the image, so it covers
  every original pixel that a covered working pixel touches.

SQL has the point formula once, the `original_px` macro (schema/010_tidy.sql; `sql_original_point`
calls it), and the box formula in the view window_top_concepts (schema/005; since schema/021 its
working-pixel boxes come from the lattice); tests/test_pixels.py holds both equal to these functions.
"""

from __future__ import annotations

import math

import numpy as np


def original_point(v: float, scale: float) -> int:
    """The original pixel holding the centre of working pixel `v` (one axis)."""
    return int(math.floor((v + 0.5) * scale))


def original_points(v: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """original_point for arrays (int64)."""
    return np.floor((np.asarray(v, dtype=np.float64) + 0.5) * scale).astype(np.int64)


def original_box(x0: float, y0: float, x1: float, y1: float, scale: float, width: int, height: int
                 ) -> tuple[int, int, int, int]:
    """A working-pixel box [x0, x1) x [y0, y1) in original pixels, clipped to the width x height image."""
    return (max(0, int(math.floor(x0 * scale))), max(0, int(math.floor(y0 * scale))),
            min(width, int(math.ceil(x1 * scale))), min(height, int(math.ceil(y1 * scale))))


def sql_original_point(column: str, scale: str = "i.scale") -> str:
    """The same conversion in DuckDB: a call of the one SQL macro, `original_px` (schema 010; every
    open file has it, an older file being upgraded when opened).
    `column` and `scale` are fixed SQL names from the caller's own query text, never user input."""
    return f"original_px({column}, {scale})"
