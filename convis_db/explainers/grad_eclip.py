"""Grad-ECLIP (Zhao et al., ICML 2024, "Gradient-based Visual and Textual Explanations for CLIP") for
open_clip Vision Transformers.

The explained quantity is the cosine S = cos(f_I(image), t) between the image embedding and a text
embedding t. In the last transformer block the class token's attention output is
o_cls = sum_i A_i v_i (per head, heads concatenated), so to first order S is a sum over patches i
and channels c of w_c * A_i * v_i^c with w_c = dS/do_cls^c. Grad-ECLIP keeps that structure:

    H_i = ReLU( lambda_i * sum_c w_c v_i^c )

* w_c: the gradient of S with respect to the class token's attention output of the last block
  (before the output projection), one weight per channel; used as is (its sign matters), with an
  option to rectify it;
* v_i: the value vector of patch token i in the last block (heads concatenated);
* lambda_i: the "loosened" attention of the class query to patch i: the cosine between q_cls and
  k_i (no softmax, no temperature: the softmax of a trained ViT is too peaked to localise),
  min-max normalised over the patches.

H is reshaped to the patch grid, upsampled (bilinear) to the image and min-max normalised.

The image is fed at (about) its own resolution, with the positional embeddings interpolated, so a
non-square photo gets a non-square patch grid: the short side is capped at `max_short_side` pixels
and both sides are rounded to multiples of the patch size.

Implementation: the image runs through the model's own transformer once without gradients; hooks
on `model.visual.transformer.resblocks[-1]` capture the last block's input and output. The last
block is then recomputed from its input with q, k, v from the block's `attn.in_proj_weight` /
`in_proj_bias` (open_clip's ResidualAttentionBlock wraps nn.MultiheadAttention, whose fused kernel
exposes none of them); the recomputation is checked against the captured output, so a block this
code does not understand is refused instead of being explained wrongly. Only the recomputed last
block and the head (ln_post, proj) carry gradients.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from convis_db.engine.images import read_image
from convis_db.engine.render import normalise_map, resize_map
from convis_db.engine.windows import normalise
from convis_db.errors import ModelError, UsageError
from convis_db.models.clip import LoadedModel

log = logging.getLogger(__name__)

#: The reference implementation keeps images at their own size up to a 640-pixel short side.
DEFAULT_MAX_SHORT_SIDE = 640


@dataclass
class GradEclipMap:
    saliency: np.ndarray      # (H, W) float32 in [0, 1], at the original image size
    patch_map: np.ndarray     # (gh, gw) float32 raw relevance H_i per patch (before upsampling/normalising)
    cosine: float             # the explained image-text cosine S
    input_width: int          # size of the image fed to the ViT
    input_height: int
    width: int                # original image size
    height: int
    text: str = ""
    synset: str | None = None
    image_path: str = ""
    image_id: int | None = None   # the stored image explained, when IMAGE named one

    @property
    def peak(self) -> dict:
        y, x = np.unravel_index(int(np.argmax(self.saliency)), self.saliency.shape)
        return {"score": float(self.saliency[y, x]), "x_orig": int(x), "y_orig": int(y)}

    # What convis_db.Map reads from the maps it wraps (the saliency is already at the original size).
    source = property(lambda self: "grad-eclip")
    grid = property(lambda self: None)

    def original_pixels(self) -> np.ndarray:
        return read_image(self.image_path).pixels


# ------------------------------------------------------------------------------------ model checks
def _vit_parts(model: torch.nn.Module):
    """(visual, last block, its attention) of an open_clip ViT with a class token; ModelError otherwise."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    visual = getattr(model, "visual", None)
    name = type(visual).__name__
    if not isinstance(visual, VisionTransformer):
        raise ModelError(f"Grad-ECLIP needs an open_clip Vision Transformer image tower; this model's is {name}. "
                         "Use --method convis, or a ViT model (ViT-B-32, ViT-B-16, ViT-L-14, ...).")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ModelError("Grad-ECLIP explains the class token: this ViT pools its output differently "
                         f"(pool_type={getattr(visual, 'pool_type', '?')!r}, attentional pooling: "
                         f"{getattr(visual, 'attn_pool', None) is not None}). Use --method convis.")
    block = visual.transformer.resblocks[-1]
    attn = getattr(block, "attn", None)
    if (not isinstance(block, ResidualAttentionBlock) or not isinstance(attn, torch.nn.MultiheadAttention)
            or attn.in_proj_weight is None or hasattr(block, "ln_1_kv")):
        raise ModelError(f"Grad-ECLIP supports open_clip's standard attention block; this ViT's last block is "
                         f"{type(block).__name__}. Use --method convis.")
    return visual, block, attn


def supports(model: torch.nn.Module) -> bool:
    try:
        _vit_parts(model)
    except ModelError:
        return False
    return True


# ------------------------------------------------------------------------------------ input
def input_size(width: int, height: int, patch: int, max_short_side: int | None) -> tuple[int, int]:
    """(w, h) fed to the ViT: the short side capped, both sides rounded to multiples of the patch."""
    scale = 1.0
    if max_short_side is not None and min(width, height) > max_short_side:
        scale = max_short_side / min(width, height)
    w = max(patch, int(round(width * scale / patch)) * patch)
    h = max(patch, int(round(height * scale / patch)) * patch)
    return w, h


def _model_input(loaded: LoadedModel, pixels: np.ndarray, patch: int, max_short_side: int | None) -> torch.Tensor:
    h0, w0 = pixels.shape[:2]
    w, h = input_size(w0, h0, patch, max_short_side)
    array = pixels if pixels.flags.writeable and pixels.flags.c_contiguous else np.array(pixels)
    t = torch.from_numpy(array).to(loaded.device).permute(2, 0, 1)
    if (h, w) != (h0, w0):
        t = F.interpolate(t[None].float(), size=(h, w), mode="bicubic", align_corners=False,
                          antialias=True)[0].clamp_(0, 255)
    return normalise(t, loaded.mean, loaded.std)[None]


def _tokens(visual, x: torch.Tensor) -> torch.Tensor:
    """Patch embedding, class token and (interpolated) positional embedding, as VisionTransformer._embeds."""
    x = visual.conv1(x)
    gh, gw = x.shape[-2:]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)
    pos = visual.positional_embedding.to(x.dtype)
    g0h, g0w = visual.grid_size
    if (gh, gw) != (g0h, g0w):
        grid = pos[1:].reshape(1, g0h, g0w, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)], dim=0)
    x = x + pos
    x = visual.patch_dropout(x)
    return visual.ln_pre(x)


def _last_block(block, attn: torch.nn.MultiheadAttention, x: torch.Tensor):
    """Recompute the block on batch-first x; returns (output, o leaf, q, k, v), all (N, L, D).

    `o` is the attention output before out_proj (heads concatenated), made a leaf so that dS/do is
    exactly what autograd returns whatever the rest of the model's requires_grad flags are.
    """
    n, length, d = x.shape
    heads = attn.num_heads
    hd = d // heads
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, length, heads, hd).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-2, -1) / math.sqrt(hd), dim=-1)
    o = (weights @ split(v)).transpose(1, 2).reshape(n, length, d)
    o = o.detach().requires_grad_(True)
    out = F.linear(o, attn.out_proj.weight, attn.out_proj.bias)
    y = x + block.ls_1(out)
    y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return y, o, q.detach(), k.detach(), v.detach()


# ------------------------------------------------------------------------------------ the method
def grad_eclip(loaded: LoadedModel, pixels: np.ndarray, text_embedding: np.ndarray | torch.Tensor, *,
               max_short_side: int | None = DEFAULT_MAX_SHORT_SIDE, relu_weights: bool = False) -> GradEclipMap:
    """The Grad-ECLIP map of the cosine between `pixels` ((H, W, 3) uint8) and `text_embedding` ((D,))."""
    visual, block, attn = _vit_parts(loaded.model)
    ph, pw = visual.conv1.kernel_size
    if ph != pw or tuple(visual.conv1.stride) != (ph, pw):
        raise ModelError(f"Grad-ECLIP here needs square, non-overlapping patches; this ViT's are {ph}x{pw}.")
    patch = int(ph)
    device = loaded.device
    if isinstance(text_embedding, torch.Tensor):
        text_embedding = text_embedding.detach().cpu().numpy()
    text_np = np.asarray(text_embedding, dtype=np.float32).reshape(-1)
    if text_np.size != loaded.embed_dim:
        raise UsageError(f"text embedding has {text_np.size} values; the model embeds into {loaded.embed_dim}.")

    captured: dict[str, torch.Tensor] = {}

    def before(module, args, kwargs):
        captured["input"] = args[0] if args else kwargs["q_x"]

    def after(module, args, kwargs, output):
        captured["output"] = output

    with torch.inference_mode(False):   # a caller's inference mode would forbid the backward pass
        text = F.normalize(torch.tensor(text_np, device=device), dim=0)
        img = _model_input(loaded, pixels, patch, max_short_side).clone()
        hooks = [block.register_forward_pre_hook(before, with_kwargs=True),
                 block.register_forward_hook(after, with_kwargs=True)]
        try:
            with torch.no_grad():
                tokens = _tokens(visual, img)
                gh, gw = img.shape[-2] // patch, img.shape[-1] // patch
                visual.transformer(tokens)
        finally:
            for hk in hooks:
                hk.remove()
        x_in, x_out = captured["input"], captured["output"]
        if not attn.batch_first:  # (L, N, D) -> (N, L, D)
            x_in, x_out = x_in.transpose(0, 1), x_out.transpose(0, 1)
        with torch.enable_grad():
            y, o, q, k, v = _last_block(block, attn, x_in.detach())
            ref = x_out.to(y.dtype)
            err = float((y.detach() - ref).norm() / ref.norm().clamp(min=1e-12))
            if not err < 1e-3:
                raise ModelError(f"Grad-ECLIP could not reproduce this model's last attention block (relative "
                                 f"difference {err:.2g}); its block differs from open_clip's standard one. "
                                 "Use --method convis.")
            pooled = visual.ln_post(y[:, 0])
            if visual.proj is not None:
                pooled = pooled @ visual.proj
            cosine = F.normalize(pooled.float(), dim=-1)[0] @ text
            (grad,) = torch.autograd.grad(cosine, o)
        w = grad[0, 0].float()
        if relu_weights:
            w = w.clamp(min=0)
        q_cls = F.normalize(q[0, 0].float(), dim=0)
        k_patch = F.normalize(k[0, 1:].float(), dim=-1)
        lam = k_patch @ q_cls
        lam = (lam - lam.min()) / (lam.max() - lam.min()).clamp(min=1e-12)
        relevance = torch.relu(lam * (v[0, 1:].float() @ w))
        patch_map = relevance.reshape(gh, gw).cpu().numpy().astype(np.float32)
    h0, w0 = pixels.shape[:2]
    saliency = normalise_map(resize_map(patch_map, w0, h0))
    return GradEclipMap(saliency=saliency, patch_map=patch_map, cosine=float(cosine.detach()),
                        input_width=int(img.shape[-1]), input_height=int(img.shape[-2]), width=int(w0), height=int(h0))


def text_embedding(loaded: LoadedModel, text: str) -> np.ndarray:
    if not text or not text.strip():
        raise UsageError("--text is empty; give a phrase such as 'a photo of a dog'.")
    return loaded.encode_text([text])[0]


# ------------------------------------------------------------------------------------ with a database



class GradEclipService:
    """Grad-ECLIP maps against one database: the database's model, texts or synset definitions."""

    def __init__(self, con, device: torch.device | None = None, max_short_side: int | None = DEFAULT_MAX_SHORT_SIDE):
        self.con = con
        self.device = device or torch.device("cpu")
        self.max_short_side = max_short_side
        self._model: LoadedModel | None = None
        self._model_id: int | None = None
        self._definitions: np.ndarray | None = None
        self._texts: dict[str, np.ndarray] = {}

    @property
    def model(self) -> LoadedModel:
        """The database's model, checked for a ViT image tower (refused before any image is read)."""
        model = self.database_model
        _vit_parts(model.model)
        return model

    def concept_embedding(self, concept: str) -> tuple[str, np.ndarray]:
        """(definition, d_s): the stored embedding of the synset's definition, d_s = E_T(def(s))."""
        from convis_db.store.hierarchy_store import find_synset_name
        from convis_db.store.model_store import load_definition_embeddings

        sid = find_synset_name(self.con, concept)
        _ = self.model
        if self._definitions is None:
            self._definitions = load_definition_embeddings(self.con, self._model_id)
        definition = self.con.execute("SELECT definition FROM synsets WHERE synset_id = ?", [sid]).fetchone()[0]
        return definition, self._definitions[sid]

    def text_embedding(self, text: str) -> np.ndarray:
        if text not in self._texts:
            self._texts[text] = text_embedding(self.model, text)
        return self._texts[text]

    def target(self, concept: str | None, text: str | None) -> tuple[str, str | None, np.ndarray]:
        """(text, synset, embedding) for a --text or a CONCEPT (its definition)."""
        if text is not None and concept is not None:
            raise UsageError("give either a CONCEPT (its definition is the text) or --text, not both.")
        if text is not None:
            return text, None, self.text_embedding(text)
        if concept is None:
            raise UsageError("Grad-ECLIP needs a text: give a CONCEPT (its definition is used) "
                             "or --text 'a photo of ...'.")
        definition, emb = self.concept_embedding(concept)
        return definition, concept, emb

    def for_pixels(self, pixels: np.ndarray, concept: str | None = None, text: str | None = None) -> GradEclipMap:
        label, synset, emb = self.target(concept, text)
        result = grad_eclip(self.model, pixels, emb, max_short_side=self.max_short_side)
        result.text, result.synset = label, synset
        return result

    def for_file(self, path: str | Path, concept: str | None = None, text: str | None = None) -> GradEclipMap:
        decoded = read_image(path)
        result = self.for_pixels(decoded.pixels, concept, text)
        result.image_path = str(Path(path).absolute())
        return result

    def for_ref(self, ref: str, concept: str | None = None, text: str | None = None) -> GradEclipMap:
        """IMAGE as a stored id/path/hash (its file is read again), else a file on disk."""
        from convis_db.errors import NotFoundError
        from convis_db.store.image_store import get_image

        result = self.for_file(self.image_path(ref), concept, text)
        try:
            result.image_id = get_image(self.con, str(ref)).image_id
        except NotFoundError:
            pass
        return result

    def image_path(self, ref: str) -> str:
        """The file of IMAGE: a stored image's (id, path or sha256), else the file on disk."""
        from convis_db.store.image_store import image_file

        return image_file(self.con, ref)

    def explain_text(self, image: str | np.ndarray, text: str | None, blocks: int | None = None,
                     concept: str | None = None):
        """Grad-ECLIP's word importance of `text` for IMAGE (a stored image, a file, or (H, W, 3) uint8
        pixels); a TextExplanation (explainers/grad_eclip_text.py). With `concept` instead of a text, the
        words of the synset's definition (the text its d_s embeds: why the concept matched). Stores nothing."""
        from convis_db.explainers.grad_eclip_text import DEFAULT_TEXT_BLOCKS, _text_tower, explain_text_for_image

        if (text is None) == (concept is None):
            raise UsageError("give either a text to explain or a concept (its definition is explained), not both.")
        synset = None
        if concept is not None:
            from convis_db.store.hierarchy_store import find_synset_name

            sid = find_synset_name(self.con, concept)
            synset, text = self.con.execute("SELECT name, definition FROM synsets WHERE synset_id = ?", [sid]).fetchone()
        model = self.database_model
        if isinstance(image, np.ndarray):
            pixels, path = image, ""
        else:
            path = str(Path(self.image_path(image)).absolute())
            pixels = read_image(path).pixels
        _text_tower(model.model)
        result = explain_text_for_image(model, pixels, text, blocks=DEFAULT_TEXT_BLOCKS if blocks is None else blocks,
                                        image_path=path)
        result.synset = synset
        return result

    @property
    def database_model(self) -> LoadedModel:
        """The database's model for textual explanations (any image tower; the text tower is checked)."""
        if self._model is None:
            from convis_db.profile import read_profile

            profile = read_profile(self.con)
            self._model_id, self._model = profile.model_id, profile.load_model(self.device)
        return self._model
