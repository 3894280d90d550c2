"""The paper's image-level similarity: the whole image as CLIP itself sees it, x = E_I(x).

The paper validates max_rank_sim at image level (Table I) with the embedding of the whole image,
not with a saliency map. The image is prepared by the model's own open_clip preprocessing (the
`preprocess_cfg` of the model's visual tower when it has one: resize the short side, centre crop,
normalise; else open_clip's default eval transform with the model's size, mean and std), on PIL as
open_clip does, so that x equals what `open_clip.create_model_and_transforms` users get.

This is the one home of that preparation: `evaluation.explainers.image_embedding` delegates here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class ImageLevel:
    """Image-level scores of one image against every synset of T (exact integer counts)."""

    embedding: np.ndarray      # (D,) float32, L2-normalised x = E_I(x)
    rank_less: np.ndarray      # (n,) int32: |T| * rank_sim(x, s), the synset alone
    max_rank_less: np.ndarray  # (n,) int32: |T| * max_rank_sim(x, s), s and its descendants

    @property
    def n_synsets(self) -> int:
        return len(self.rank_less)


def whole_image_transform(model) -> Callable[[Image.Image], torch.Tensor]:
    """The model's open_clip eval preprocessing (PIL image -> normalised (3, S, S) float tensor).

    `model` is a LoadedModel (its open_clip module in `.model`) or a look-alike with image_size,
    mean and std (the tests' toy encoder).
    """
    from open_clip.transform import PreprocessCfg, image_transform, image_transform_v2

    visual = getattr(getattr(model, "model", None), "visual", None)
    cfg = getattr(visual, "preprocess_cfg", None)
    if cfg:
        return image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    return image_transform(int(model.image_size), is_train=False, mean=tuple(model.mean), std=tuple(model.std))


def prepare_whole_images(model, pixels_list: list[np.ndarray]) -> torch.Tensor:
    """(N, 3, S, S) inputs of the whole images (upright uint8 RGB arrays), on the model's device."""
    transform = whole_image_transform(model)
    batch = [transform(Image.fromarray(np.ascontiguousarray(p))) for p in pixels_list]
    return torch.stack(batch).to(model.device)


@torch.inference_mode()
def image_embeddings(model, pixels_list: list[np.ndarray], batch_size: int = 64) -> torch.Tensor:
    """(N, D) float32 L2-normalised whole-image embeddings, on the model's device."""
    out = []
    for start in range(0, len(pixels_list), batch_size):
        inputs = prepare_whole_images(model, pixels_list[start:start + batch_size])
        out.append(torch.nn.functional.normalize(model.encode_image_batch(inputs).float(), dim=-1))
    return torch.cat(out)


def image_embedding(model, pixels: np.ndarray) -> np.ndarray:
    """(D,) float32 unit vector: CLIP's own view of one whole image."""
    return image_embeddings(model, [pixels])[0].cpu().numpy()
