"""Load an open_clip model and run its text and image encoders in batches.

The engine only ever calls `encode_text` (definitions) and `encode_image_batch` (already cropped,
resized and normalised patches on the device). Both return L2-normalised float32 embeddings, computed
in the model's precision (convis_db/models/precision.py).
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
from convis_db.models.precision import precision_context, resolve_precision
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
    precision: str = "fp32"      # fp32 | bf16 | fp16, resolved for `device` (resolve_precision)

    def autocast(self):
        """The context both encoders run in: autocast to bf16/fp16, or nothing for fp32."""
        return precision_context(self.precision, self.device)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """L2-normalised text embeddings (float32, one row per text).

        Texts are encoded in order of token length, each batch cut to its longest text: with a causal
        text tower pooled at the end-of-text token, the padding after it cannot change the result,
        and definitions are far shorter than the 77-token context (about 4x less work).
        """
        out = np.empty((len(texts), self.embed_dim), np.float32)
        tokens = self.tokenizer(list(texts))
        lengths = _token_lengths(self.model, tokens)
        order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(len(texts))
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = tokens[torch.from_numpy(idx)]
            if lengths is not None:
                batch = batch[:, : int(lengths[idx].max())]
            batch = batch.to(self.device)
            with self.autocast():
                feats = _encode_text_truncated(self.model, batch) if lengths is not None else self.model.encode_text(batch)
            out[idx] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            if progress:
                progress(len(idx))
        return out

    @torch.inference_mode()
    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (float32, on the device) of normalised (N,3,S,S) pixels."""
        with self.autocast():
            feats = self.model.encode_image(pixels)
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def _token_lengths(model: torch.nn.Module, tokens: torch.Tensor) -> np.ndarray | None:
    """Per text, the number of tokens up to and including end-of-text, when truncation is exact.

    That holds for open_clip's standard CLIP text tower: causal attention mask, argmax (EOT) pooling,
    positional embeddings added by position. Other towers get None (encoded at full length).
    """
    from open_clip.model import CLIP

    if not isinstance(model, CLIP) or getattr(model, "text_pool_type", None) != "argmax":
        return None
    mask = getattr(model, "attn_mask", None)
    if mask is None or mask.shape[0] != tokens.shape[1]:
        return None
    return (tokens.argmax(dim=-1) + 1).numpy()


def _encode_text_truncated(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text on a sequence cut after its last end-of-text token."""
    from open_clip.transformer import text_global_pool

    n = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type)
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


@contextlib.contextmanager
def _quiet_loader_logs():
    """open_clip and the hub client log their own warnings and errors on the root logger while
    loading; a failure becomes our ModelError (with the offline recipe), so they only add noise."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, previous):
            lg.setLevel(level)


def load_model(spec: ModelSpec, device: torch.device, precision: str | None = None) -> LoadedModel:
    """Build the model; a tag that cannot be downloaded raises ModelError with the offline recipe.

    `precision` is fp32, bf16, fp16, or None/'auto' for the device's default; one the device cannot
    run is a UsageError before anything is loaded.
    """
    import open_clip

    precision = resolve_precision(precision, device)

    if spec.config_path:
        open_clip.add_model_config(spec.config_path)
    try:
        if spec.is_random:
            # Seeded without touching the caller's global RNG state; open_clip's own "initialized
            # randomly" warning is replaced by ours.
            with torch.random.fork_rng(devices=[]), _quiet_loader_logs():
                torch.manual_seed(RANDOM_SEED)
                model = open_clip.create_model(spec.name, pretrained=None, device="cpu")
        else:
            with _quiet_loader_logs():
                model = open_clip.create_model(spec.name, pretrained=spec.pretrained, device="cpu",
                                               require_pretrained=True)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, file and state-dict errors all land here
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        msg = msg.split(". Last error:")[0].rstrip(".")  # the hub's message repeats itself
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
    return LoadedModel(spec, model, tokenizer, device, size, mean, std, embed_dim, precision)
