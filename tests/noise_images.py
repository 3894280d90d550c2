"""Random-noise PNG files for tests that need image files and no particular content."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def write_noise_pngs(folder: Path, sizes: Sequence[tuple[int, int]], seed: int, name: str = "img_{i}.png"
                     ) -> list[Path]:
    """One uniform-noise RGB PNG per (height, width) in `sizes`, drawn in order from one seeded
    generator (so a seed always gives the same files), named `name.format(i=index)`."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = Path(folder) / name.format(i=i)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
