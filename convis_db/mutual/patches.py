"""The vision encoder's view of an image: the square model input, its patch tokens and its embedding.

The authors feed CLIP a square resize of the image (no centre crop) and decompose the tokens that the
last transformer block outputs (before ln_post and the projection), without the class token. That is
what `patch_tokens` returns for an open_clip VisionTransformer, read with a forward hook on
`visual.transformer` during the same pass that gives the image embedding.

Models that are not open_clip ViTs have no patch tokens to decompose and are refused with ModelError,
unless they carry their own `patch_tokens(pixels) -> (N, gh, gw, D)` method (the test toy encoder does).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from convis_db.engine.windows import normalise
from convis_db.errors import ModelError


def square_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, bicubic, aspect ratio not kept (the authors' transform)."""
    if pixels.shape[:2] == (size, size):
        return np.ascontiguousarray(pixels)
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BICUBIC))


def to_model_batch(model, images_u8: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 images -> (N, 3, S, S) float32 normalised with the model's mean and std, on its device."""
    arr = np.ascontiguousarray(np.stack(list(images_u8)) if isinstance(images_u8, list) else images_u8)
    t = torch.from_numpy(arr).to(model.device).permute(0, 3, 1, 2)
    return torch.stack([normalise(img, model.mean, model.std) for img in t])


def _vision_transformer(model):
    """The open_clip VisionTransformer of a LoadedModel, or a ModelError saying what cannot be explained."""
    from open_clip.transformer import VisionTransformer

    net = getattr(model, "model", None)
    visual = getattr(net, "visual", None)
    if not isinstance(visual, VisionTransformer):
        name = type(visual).__name__ if visual is not None else type(model).__name__
        raise ModelError(
            f"mutual-knowledge explanations decompose a Vision Transformer's patch tokens; this model's image "
            f"tower is {name} (no patch tokens). Use an open_clip ViT model (ViT-B-32, ViT-B-16, ViT-L-14, ...).")
    if getattr(visual, "attn_pool", None) is not None:
        raise ModelError("mutual-knowledge explanations need the ViT's own patch tokens; this ViT pools them with "
                         "attentional pooling (CoCa-style), which is not supported. Use a CLIP ViT.")
    return visual


def supports(model) -> bool:
    """Whether `model` has patch tokens this package can decompose."""
    if callable(getattr(model, "patch_tokens", None)):
        return True
    try:
        _vision_transformer(model)
    except ModelError:
        return False
    return True


def check_supported(model) -> None:
    """Raise the ModelError of `patch_tokens` before any image is read."""
    if not callable(getattr(model, "patch_tokens", None)):
        _vision_transformer(model)


@torch.inference_mode()
def patch_tokens(model, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, gh, gw, D) float32, image embeddings (N, E) L2-normalised) of a normalised batch."""
    own = getattr(model, "patch_tokens", None)
    if callable(own):
        return own(batch).float(), model.encode_image_batch(batch)
    visual = _vision_transformer(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        captured["tokens"] = output

    handle = visual.transformer.register_forward_hook(hook)
    try:
        with model.autocast():
            feats = model.model.encode_image(batch)
    finally:
        handle.remove()
    x = captured["tokens"]
    if not getattr(visual.transformer, "batch_first", True):
        x = x.transpose(0, 1)
    gh, gw = (int(g) for g in visual.grid_size)
    n_prefix = x.shape[1] - gh * gw
    if n_prefix < 0:
        raise ModelError(f"the ViT produced {x.shape[1]} tokens for a {gh}x{gw} patch grid; it cannot be explained.")
    tokens = x[:, n_prefix:].float().reshape(x.shape[0], gh, gw, x.shape[-1])
    return tokens, torch.nn.functional.normalize(feats.float(), dim=-1)
