"""Load an open_clip model and run its text and image encoders in batches.

The engine only ever calls `encode_text` (definitions) and `encode_image_batch` (already cropped,
resized and normalised patches on the device). Both return L2-normalised float32 embeddings.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convis_db.errors import ModelError
from convis_db.models.registry import RANDOM_SEED, ModelSpec

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    "Pretrained weights for a tag are downloaded once from the model hub, which needs a network. "
    "Offline, download the checkpoint elsewhere and pass its path with --pretrained PATH "
    "(an open_clip checkpoint such as open_clip_pytorch_model.bin), or use --pretrained none for a "
    "smoke run with meaningless random weights."
)


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: Callable
    device: torch.device
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int

    def autocast(self):
        """bf16 autocast on CUDA (fp16 where bf16 is unsupported); full precision on CPU."""
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """L2-normalised text embeddings (float32, one row per text)."""
        out = np.empty((len(texts), self.embed_dim), np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            tokens = self.tokenizer(chunk).to(self.device)
            with self.autocast():
                feats = self.model.encode_text(tokens)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            out[start:start + len(chunk)] = feats.cpu().numpy()
            if progress:
                progress(len(chunk))
        return out

    @torch.inference_mode()
    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (float32, on the device) of normalised (N,3,S,S) pixels."""
        with self.autocast():
            feats = self.model.encode_image(pixels)
        return torch.nn.functional.normalize(feats.float(), dim=-1)


@contextlib.contextmanager
def _quiet_root_warnings():
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


def load_model(spec: ModelSpec, device: torch.device) -> LoadedModel:
    """Build the model; a tag that cannot be downloaded raises ModelError with the offline recipe."""
    import open_clip

    if spec.config_path:
        open_clip.add_model_config(spec.config_path)
    try:
        if spec.is_random:
            # Seeded without touching the caller's global RNG state; open_clip's own "initialized
            # randomly" warning is replaced by ours.
            with torch.random.fork_rng(devices=[]), _quiet_root_warnings():
                torch.manual_seed(RANDOM_SEED)
                model = open_clip.create_model(spec.name, pretrained=None, device="cpu")
        else:
            model = open_clip.create_model(spec.name, pretrained=spec.pretrained, device="cpu",
                                           require_pretrained=True)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, file and state-dict errors all land here
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if spec.is_local_checkpoint:
            raise ModelError(
                f"could not load checkpoint {spec.pretrained} into {spec.name}: {msg}. "
                "Check that the checkpoint was saved from this model architecture."
            ) from exc
        raise ModelError(f"could not load {spec.name} weights {spec.pretrained!r}: {msg}. {OFFLINE_HINT}") from exc
    model.eval().to(device)
    visual = model.visual
    size = visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(float(x) for x in getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(float(x) for x in getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    embed_dim = int(json.loads(spec.config_json)["embed_dim"])
    tokenizer = open_clip.get_tokenizer(spec.name)
    if spec.is_random:
        log.warning("model %s has random weights: every score it produces is meaningless", spec.name)
    return LoadedModel(spec, model, tokenizer, device, size, mean, std, embed_dim)
