"""A reference-style Concept Visualization loop, as the authors' grid method runs it.

For one concept: every large patch and every small patch on the stride grid is cut with PIL, resized
and normalised one at a time, encoded alone (batch of one), compared with every synset definition,
and the concept's best descendant rank is accumulated over the patch's pixels. One CLIP pass per
patch and per concept: an all-concept explanation repeats this |T| times.

This file exists to be timed against the engine; it is not used by convis-db.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def reference_concept_map(model, definitions: np.ndarray, descendant_ids: np.ndarray, working: Image.Image,
                          stride: int, small: int, large: int) -> np.ndarray:
    """Mean over covering windows of the concept's best rank, computed one patch at a time."""
    w, h = working.size
    size = model.image_size
    mean = np.array(model.mean, np.float32)[:, None, None]
    std = np.array(model.std, np.float32)[:, None, None]
    fill = tuple(int(round(m * 255)) for m in model.mean)
    padded = Image.new("RGB", (w + large, h + large), fill)
    padded.paste(working, (0, 0))
    defs = torch.from_numpy(definitions).to(model.device)
    n = definitions.shape[0]
    total = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.float64)
    for y0 in range(0, h, stride):
        for x0 in range(0, w, stride):
            embs = []
            for side in (small, large):
                patch = padded.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)
                arr = (np.asarray(patch, np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
                with torch.inference_mode():
                    embs.append(model.encode_image_batch(torch.from_numpy(arr)[None].to(model.device))[0])
            e = (embs[0] + embs[1]) / 2
            z = (defs @ e).cpu().numpy()
            best = z[descendant_ids].max()
            value = np.count_nonzero(z < best) / n
            total[y0:y0 + large, x0:x0 + large] += value
            count[y0:y0 + large, x0:x0 + large] += 1
    return (total / count).astype(np.float32)
