"""Grad-ECLIP's textual explanations: how much each word of a text contributes to its match with an image.

Zhao et al. (ICML 2024) explain the image-text cosine S = cos(f_I(image), f_T(text)) on the text side
with the same decomposition as on the image side (grad_eclip.py), read at the pooled end-of-text (EOT)
position of the causal text tower and summed over its last n blocks:

    H_j = ReLU( sum_l  lambda_j^l * sum_c w_c^l v_j^{l,c} )

* w^l = dS/do^l at the EOT position: the gradient of S with respect to block l's attention output
  (before its output projection, heads concatenated), one weight per channel;
* v_j^l: the value vector of token j in block l (heads concatenated);
* lambda_j^l: cos(q_EOT, k_j) in block l, min-max normalised over the positions the EOT query can
  attend to (start token to EOT; later positions are masked out by the causal mask);
* H is kept for the text's own tokens (start and end tokens dropped) and normalised to sum 1.

Where this differs from the authors' notebook (docs/fidelity.md): the blocks are recomputed with the
model's real number of heads (the notebook recomputes them with one head, which changes the network
being explained), and lambda is normalised over the positions up to EOT (the notebook includes the
padding after EOT, which makes the weights depend on the context length).

The image side is the model's own whole-image embedding (engine/whole_image.py: its eval preprocessing).
The text runs through the model's own text tower once without gradients; a hook captures the input of
the first recomputed block; those blocks, ln_final and the projection are then recomputed with
gradients, and the recomputed embedding is checked against the model's own (a tower this code does not
understand is refused rather than explained wrongly).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from convis_db.errors import ModelError, UsageError

log = logging.getLogger(__name__)

#: How many of the text tower's last blocks are explained (the authors use 8 of ViT-B/16's 12).
DEFAULT_TEXT_BLOCKS = 8


@dataclass(frozen=True)
class TokenWeight:
    """One BPE token of the text: its position in the tokenised sequence and its share of the match."""

    token: str
    weight: float
    position: int        # index in the token sequence (0 is the start token)
    word: int            # index of the word it belongs to

    def as_dict(self) -> dict:
        return {"token": self.token, "weight": self.weight, "position": self.position, "word": self.word}


@dataclass(frozen=True)
class WordWeight:
    """A word as the tokenizer splits the text (BPE tokens up to an end of word), its tokens' weights summed."""

    word: str
    weight: float

    def as_dict(self) -> dict:
        return {"word": self.word, "weight": self.weight}


@dataclass
class TextExplanation:
    """The word importance of `text` for its match with an image (weights sum to 1 unless all are 0)."""

    text: str
    similarity: float                 # the explained cosine S
    tokens: list[TokenWeight]
    words: list[WordWeight]
    blocks: int                       # how many last blocks of the text tower were explained
    truncated: bool = False           # the text was longer than the model's context and was cut
    image_path: str = ""
    notes: list[str] = field(default_factory=list)
    synset: str | None = None         # the concept whose definition is the text, when one was asked for

    @property
    def all_zero(self) -> bool:
        """No token has positive relevance (every weight is 0)."""
        return not any(t.weight > 0 for t in self.tokens)

    def as_dict(self) -> dict:
        return {"image": self.image_path, "text": self.text, "synset": self.synset, "similarity": self.similarity,
                "blocks": self.blocks,
                "truncated": self.truncated, "words": [w.as_dict() for w in self.words],
                "tokens": [t.as_dict() for t in self.tokens]}

    def __repr__(self) -> str:
        top = sorted(self.words, key=lambda w: -w.weight)[:5]
        return (f"<TextExplanation {self.text!r}: similarity {self.similarity:.4f}, top words "
                + ", ".join(f"{w.word} {w.weight:.3f}" for w in top) + ">")


# ------------------------------------------------------------------------------------ the text tower
@dataclass
class _TextTower:
    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor
    blocks: torch.nn.ModuleList
    ln_final: torch.nn.Module
    projection: torch.Tensor | torch.nn.Module | None
    attn_mask: torch.Tensor


def _text_tower(model: torch.nn.Module) -> _TextTower:
    """The parts of open_clip's CLIP text tower (causal, pooled at EOT); ModelError for anything else
    (CustomTextCLIP's Hugging Face towers, CoCa's class-token pooling)."""
    from open_clip.model import CLIP
    from open_clip.transformer import ResidualAttentionBlock

    tower = model
    pool = getattr(tower, "text_pool_type", None)
    parts = [getattr(tower, n, None) for n in ("token_embedding", "positional_embedding", "transformer", "ln_final")]
    mask = getattr(tower, "attn_mask", None)
    if not isinstance(model, CLIP) or any(p is None for p in parts) or mask is None or pool != "argmax":
        raise ModelError("textual Grad-ECLIP needs open_clip's CLIP text tower (causal, pooled at the end-of-text "
                         f"token); this model ({type(model).__name__}, text pooling {pool!r}) has another one.")
    token_embedding, positional_embedding, transformer, ln_final = parts
    assert token_embedding is not None and positional_embedding is not None and transformer is not None
    assert ln_final is not None  # checked above; for the type checker
    blocks = transformer.resblocks
    for block in blocks:
        attn = getattr(block, "attn", None)
        if (not isinstance(block, ResidualAttentionBlock) or not isinstance(attn, torch.nn.MultiheadAttention)
                or attn.in_proj_weight is None or hasattr(block, "ln_1_kv")):
            raise ModelError(f"textual Grad-ECLIP supports open_clip's standard attention block; this text tower "
                             f"has {type(block).__name__}.")
    projection = getattr(tower, "text_projection", None)
    return _TextTower(token_embedding, positional_embedding, blocks, ln_final, projection, mask)


def supports_text(model: torch.nn.Module) -> bool:
    try:
        _text_tower(model)
    except ModelError:
        return False
    return True


def _recompute_block(block, x: torch.Tensor, mask: torch.Tensor):
    """One block on batch-first x with the model's heads; returns (output, o, q, k, v), all (N, L, D).

    `o` (the attention output before out_proj, heads concatenated) stays in the graph so that
    dS/do of every recomputed block comes from one backward pass.
    """
    attn = block.attn
    n, length, d = x.shape
    heads = attn.num_heads
    hd = d // heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, length, heads, hd).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(hd) + mask.to(x.dtype)
    o = (torch.softmax(scores, dim=-1) @ split(v)).transpose(1, 2).reshape(n, length, d)
    y = x + block.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
    y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return y, o, q.detach(), k.detach(), v.detach()


def _project(tower: _TextTower, pooled: torch.Tensor) -> torch.Tensor:
    if tower.projection is None:
        return pooled
    if isinstance(tower.projection, torch.nn.Module):
        return tower.projection(pooled)
    return pooled @ tower.projection


# ------------------------------------------------------------------------------------ the method
@dataclass
class TokenRelevance:
    """The raw output of the method on one tokenised text (before words are formed)."""

    ids: list[int]                    # token ids from the start token to EOT
    relevance: np.ndarray             # (len(ids),) float64: sum over blocks, before ReLU
    similarity: float
    blocks: int


def token_relevance(loaded, image_embedding: np.ndarray | torch.Tensor, token_ids: torch.Tensor,
                    blocks: int = DEFAULT_TEXT_BLOCKS) -> TokenRelevance:
    """sum_l lambda_j^l sum_c w_c^l v_j^{l,c} for every position j from the start token to EOT.

    `token_ids`: (C,) or (1, C) ids as the model's tokenizer gives them (EOT is the largest id).
    """
    model = loaded.model
    tower = _text_tower(model)
    if int(blocks) < 1:
        raise UsageError(f"blocks must be at least 1 (got {blocks}).")
    nb = min(int(blocks), len(tower.blocks))
    device = loaded.device
    if isinstance(image_embedding, torch.Tensor):
        image_embedding = image_embedding.detach().cpu().numpy()
    img_np = np.asarray(image_embedding, dtype=np.float32).reshape(-1)
    if img_np.size != loaded.embed_dim:
        raise UsageError(f"image embedding has {img_np.size} values; the model embeds into {loaded.embed_dim}.")
    ids = token_ids.reshape(1, -1).to(device)
    eot = int(ids.argmax(dim=-1))
    length = eot + 1       # the causal tower's EOT output does not depend on what follows it
    ids = ids[:, :length]
    first = tower.blocks[len(tower.blocks) - nb]
    captured: dict[str, torch.Tensor] = {}

    def before(module, args, kwargs):
        captured["input"] = args[0] if args else kwargs["q_x"]

    from convis_db.models.clip import _encode_text_truncated

    with torch.inference_mode(False):
        image = F.normalize(torch.tensor(img_np, device=device), dim=0)
        hook = first.register_forward_pre_hook(before, with_kwargs=True)
        try:
            with torch.no_grad():
                reference = _encode_text_truncated(model, ids).float()[0]
        finally:
            hook.remove()
        x = captured["input"]
        if not getattr(first.attn, "batch_first", False) and x.shape[0] == length and x.shape[1] == 1:
            x = x.transpose(0, 1)  # (L, N, D) -> (N, L, D)
        mask = tower.attn_mask[:length, :length].to(device)
        with torch.enable_grad():
            x = x.detach().float()
            outs, qs, ks, vs = [], [], [], []
            for block in tower.blocks[len(tower.blocks) - nb:]:
                x, o, q, k, v = _recompute_block(block, x, mask)
                outs.append(o)
                qs.append(q)
                ks.append(k)
                vs.append(v)
            pooled = _project(tower, tower.ln_final(x)[:, eot])[0].float()
            err = float((pooled.detach() - reference).norm() / reference.norm().clamp(min=1e-12))
            if not err < 1e-3:
                raise ModelError(f"textual Grad-ECLIP could not reproduce this model's text embedding (relative "
                                 f"difference {err:.2g}); its text tower differs from open_clip's standard one.")
            similarity = F.normalize(pooled, dim=0) @ image
            grads = torch.autograd.grad(similarity, outs)
        total = torch.zeros(length, dtype=torch.float64, device=device)
        for grad, q, k, v in zip(grads, qs, ks, vs):
            w = grad[0, eot].double()
            lam = F.normalize(k[0].double(), dim=-1) @ F.normalize(q[0, eot].double(), dim=0)
            lam = (lam - lam.min()) / (lam.max() - lam.min()).clamp(min=1e-12)
            total += lam * (v[0].double() @ w)
    return TokenRelevance(ids=ids[0].tolist(), relevance=total.cpu().numpy(), similarity=float(similarity.detach()),
                          blocks=nb)


def normalised_weights(relevance: np.ndarray) -> np.ndarray:
    """ReLU of the text's own tokens (start and end dropped), normalised to sum 1; all zeros stay zeros."""
    h = np.maximum(np.asarray(relevance, dtype=np.float64)[1:-1], 0.0)
    total = h.sum()
    return h / total if total > 0 else h


# ------------------------------------------------------------------------------------ tokens and words
def _bpe_pieces(tokenizer, ids: list[int]) -> list[tuple[bytes, bool]]:
    """(bytes, ends a word) of each BPE token: open_clip's byte-level tokenizer marks a word's last token '</w>'."""
    decoder = getattr(tokenizer, "decoder", None)
    byte_decoder = getattr(tokenizer, "byte_decoder", None)
    if decoder is None or byte_decoder is None:
        raise ModelError(f"textual Grad-ECLIP reads words from open_clip's BPE tokenizer; this model's tokenizer "
                         f"is {type(tokenizer).__name__}.")
    pieces = []
    for i in ids:
        piece = decoder[int(i)]
        end = piece.endswith("</w>")
        piece = piece[:-4] if end else piece
        pieces.append((bytes(byte_decoder[c] for c in piece), end))
    return pieces


def tokens_and_words(tokenizer, ids: list[int], weights: np.ndarray) -> tuple[list[TokenWeight], list[WordWeight]]:
    """The text's tokens (ids without start and end) with their weights, and the words they form."""
    pieces = _bpe_pieces(tokenizer, ids)
    tokens: list[TokenWeight] = []
    words: list[WordWeight] = []
    buf, acc = b"", 0.0
    for pos, ((raw, end), weight) in enumerate(zip(pieces, weights), start=1):
        tokens.append(TokenWeight(raw.decode("utf-8", errors="replace"), float(weight), pos, len(words)))
        buf, acc = buf + raw, acc + float(weight)
        if end or pos == len(pieces):
            words.append(WordWeight(buf.decode("utf-8", errors="replace"), acc))
            buf, acc = b"", 0.0
    return tokens, words


def explain_text(loaded, image_embedding: np.ndarray | torch.Tensor, text: str, *,
                 blocks: int = DEFAULT_TEXT_BLOCKS) -> TextExplanation:
    """The word importance of `text` for its cosine with `image_embedding` ((D,), any norm)."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("the text to explain is empty; give a phrase such as 'a dog in a car'.")
    tokenizer = loaded.tokenizer
    ids = tokenizer([text])[0]
    raw = token_relevance(loaded, image_embedding, ids, blocks)
    inner = raw.ids[1:-1]
    weights = normalised_weights(raw.relevance)
    tokens, words = tokens_and_words(tokenizer, inner, weights)
    full = tokenizer.encode(text) if hasattr(tokenizer, "encode") else inner
    truncated = len(full) > len(inner)
    notes = []
    if truncated:
        notes.append(f"the text has {len(full)} tokens; the model reads {len(inner)}: the rest was cut.")
    if not any(t.weight > 0 for t in tokens):
        notes.append("no token has positive relevance for this match: every weight is 0.")
    return TextExplanation(text=text, similarity=raw.similarity, tokens=tokens, words=words, blocks=raw.blocks,
                           truncated=truncated, notes=notes)


def explain_text_for_image(loaded, pixels: np.ndarray, text: str, *, blocks: int = DEFAULT_TEXT_BLOCKS,
                           image_path: str = "") -> TextExplanation:
    """explain_text against the model's own whole-image embedding of an (H, W, 3) uint8 image."""
    from convis_db.engine.whole_image import image_embedding

    result = explain_text(loaded, image_embedding(loaded, pixels), text, blocks=blocks)
    result.image_path = image_path
    return result
