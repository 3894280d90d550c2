"""A toy image/text encoder pair with real (if simple) semantics, for localisation tests only.

Both encoders map into the same 4-d space (redness, greenness, blueness, neutral):

* `ToyColourModel.encode_image_batch` un-normalises the patch with the model's mean and std, scores
  every pixel's redness/greenness/blueness (how far one channel stands above the other two) and averages
  them over the patch; a constant `neutral` feature keeps grey or padded patches (the mean colour) away
  from the colour axes and from the origin.
* `ToyColourModel.encode_text` reads colour words: each occurrence of a word adds its direction.

It has every attribute ConceptEngine uses of a LoadedModel (device, image_size, mean, std, embed_dim,
encode_image_batch), so the real engine runs on it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: Directions of colour words in (red, green, blue, neutral).
COLOUR_WORDS = {
    "red": (1.0, 0.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0, 0.0),
    "blue": (0.0, 0.0, 1.0, 0.0),
    "orange": (0.7, 0.3, 0.0, 0.0),
    "yellow": (0.5, 0.5, 0.0, 0.0),
    "cyan": (0.0, 0.5, 0.5, 0.0),
    "magenta": (0.5, 0.0, 0.5, 0.0),
    "grey": (0.0, 0.0, 0.0, 1.0),
    "colour": (0.1, 0.1, 0.1, 0.3),
    "thing": (0.0, 0.0, 0.0, 0.3),
}


@dataclass
class ToyColourModel:
    image_size: int = 16
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    embed_dim: int = 4
    neutral: float = 0.15
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    calls: int = 0

    @torch.inference_mode()
    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised patches -> (N, 4) L2-normalised colour embeddings."""
        assert pixels.ndim == 4 and pixels.shape[1:] == (3, self.image_size, self.image_size), pixels.shape
        self.calls += 1
        m = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        rgb = (pixels.float() * s + m).clamp(0, 1)
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        feats = torch.stack([
            (r - (g + b) / 2).clamp(min=0).mean(dim=(1, 2)),
            (g - (r + b) / 2).clamp(min=0).mean(dim=(1, 2)),
            (b - (r + g) / 2).clamp(min=0).mean(dim=(1, 2)),
            torch.full((pixels.shape[0],), self.neutral, device=pixels.device),
        ], dim=1)
        return torch.nn.functional.normalize(feats, dim=-1)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, progress=None) -> np.ndarray:
        """L2-normalised embeddings of texts from the colour words they contain."""
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        for i, text in enumerate(texts):
            words = text.lower().replace(",", " ").replace(":", " ").split()
            vec = np.zeros(self.embed_dim, np.float64)
            for w in words:
                vec += COLOUR_WORDS.get(w, (0.0, 0.0, 0.0, 0.0))
            if not vec.any():
                raise ValueError(f"toy text without a colour word: {text!r}")
            out[i] = vec / np.linalg.norm(vec)
        return out


@dataclass
class ToyHierarchy:
    names: list[str]
    definitions: list[str]
    edges: list[tuple[int, int]]          # (parent, child)

    def id(self, name: str) -> int:
        return self.names.index(name)

    def descendants(self, name: str) -> np.ndarray:
        children: dict[int, list[int]] = {}
        for p, c in self.edges:
            children.setdefault(p, []).append(c)
        start = self.id(name)
        seen, stack = {start}, [start]
        while stack:
            for c in children.get(stack.pop(), []):
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return np.array(sorted(seen), dtype=np.int64)

    def arrays(self):
        from convis_db.store.hierarchy_store import StoredHierarchy

        return StoredHierarchy.from_edges(list(self.names), np.array([p for p, _ in self.edges], np.int32),
                               np.array([c for _, c in self.edges], np.int32))


def toy_hierarchy() -> ToyHierarchy:
    """A small colour taxonomy: red sits under warm_colour, which sits under colour; plus distractors."""
    spec = [
        ("entity.n.01", "thing", None),
        ("colour.n.01", "a colour", "entity.n.01"),
        ("warm_colour.n.01", "colour orange red yellow", "colour.n.01"),
        ("red.n.01", "red", "warm_colour.n.01"),
        ("crimson.n.01", "red red magenta", "red.n.01"),
        ("orange.n.01", "orange", "warm_colour.n.01"),
        ("yellow.n.01", "yellow", "warm_colour.n.01"),
        ("cool_colour.n.01", "colour green blue cyan", "colour.n.01"),
        ("green.n.01", "green", "cool_colour.n.01"),
        ("blue.n.01", "blue", "cool_colour.n.01"),
        ("navy.n.01", "blue blue grey", "blue.n.01"),
        ("cyan.n.01", "cyan", "cool_colour.n.01"),
        ("grey.n.01", "grey", "colour.n.01"),
        ("magenta.n.01", "magenta", "entity.n.01"),
        ("olive.n.01", "green yellow grey", "entity.n.01"),
        ("slate.n.01", "grey blue grey", "entity.n.01"),
        ("moss.n.01", "green grey grey", "entity.n.01"),
        ("rust.n.01", "red orange grey grey", "entity.n.01"),
    ]
    names = [s[0] for s in spec]
    edges = [(names.index(parent), i) for i, (_, _, parent) in enumerate(spec) if parent is not None]
    return ToyHierarchy(names, [s[1] for s in spec], edges)


def scene(height: int, width: int, box: tuple[int, int, int, int], seed: int,
          object_rgb=(210, 35, 30), background_rgb=(110, 135, 105)) -> np.ndarray:
    """A noisy grey-green background with a flat-ish coloured object in box (x0, y0, x1, y1)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.float64)
    img[:] = background_rgb
    img += rng.normal(0, 12, img.shape)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = np.asarray(object_rgb, np.float64) + rng.normal(0, 8, (y1 - y0, x1 - x0, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
