"""Describing each visual concept with textual concepts from the bank (the vision encoder's side).

As in the authors' code: each visual concept's embedding is scored against every bank entry
(cosine-like dot products); the `initial_topk` best entries of every concept are intersected, so that
all concepts compete for the same candidates; the candidates are filtered by their relevance to the whole image
(kept where cos(text, image) exceeds the candidates' mean minus `relevance_offset`, as the authors'
notebook sets it; `relevance_offset=None` keeps every candidate); the candidates' scores (times
`logit_scale`) go through
Sinkhorn-Knopp, P = exp(S / lambda) normalised by rows then columns, repeatedly, which spreads the
candidates over the concepts instead of giving every concept the same best texts; each concept keeps
its `topk` entries of P. Then every chosen text is scored by its relevance to the whole image,
logit_scale * cos(text, image), and the texts are ranked by it (the order MI dynamics removes them in).

Choices where the code leaves it open (docs/mutual.md): an empty intersection falls back to the union
of the candidates; with a single visual concept Sinkhorn is skipped (its columns would all be 1);
ties are broken by the lower bank index.
"""

from __future__ import annotations

import numpy as np

from convis_db.mutual.settings import MutualSettings


def sinkhorn_knopp(scores: np.ndarray, epsilon: float, iters: int) -> np.ndarray:
    """exp(epsilon * scores), alternately row- and column-normalised `iters` times (ends on columns)."""
    p = np.exp(epsilon * (scores - scores.max()))
    for _ in range(iters):
        p = p / p.sum(axis=1, keepdims=True)
        p = p / p.sum(axis=0, keepdims=True)
    return p


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, ties to the lower index."""
    return np.argsort(-values, kind="stable")[:k]


def candidate_entries(logits: np.ndarray, initial_topk: int) -> np.ndarray:
    """Bank entries in every concept's top `initial_topk` (sorted), or in any one's when none is shared."""
    k = min(initial_topk, logits.shape[1])
    tops = [set(_top(row, k).tolist()) for row in logits]
    common = set.intersection(*tops)
    return np.array(sorted(common if common else set.union(*tops)), dtype=np.int64)


def relevant_entries(entries: np.ndarray, image_embedding: np.ndarray, bank_embeddings: np.ndarray,
                     offset: float) -> np.ndarray:
    """The entries whose cos(text, image) exceeds the mean over `entries` minus `offset` (never none:
    the most relevant entry always passes)."""
    image = image_embedding.astype(np.float64)
    image = image / max(float(np.linalg.norm(image)), 1e-12)
    relevance = bank_embeddings[entries].astype(np.float64) @ image
    return entries[relevance > relevance.mean() - offset]


def assign_textual_concepts(concept_embeddings: np.ndarray, bank_embeddings: np.ndarray,
                            settings: MutualSettings, image_embedding: np.ndarray | None = None) -> list[list[int]]:
    """For each visual concept, its textual concepts as bank entry indices, best first. The relevance
    filter (settings.relevance_offset) needs the whole image's embedding; without one it is skipped."""
    if len(concept_embeddings) == 0:
        return []
    logits = concept_embeddings.astype(np.float64) @ bank_embeddings.astype(np.float64).T
    if settings.optimal_transport and len(concept_embeddings) > 1:
        common = candidate_entries(logits, settings.initial_topk)
        if settings.relevance_offset is not None and image_embedding is not None and len(common) > 1:
            common = relevant_entries(common, image_embedding, bank_embeddings, settings.relevance_offset)
        plan = sinkhorn_knopp(logits[:, common] * settings.logit_scale, 1.0 / settings.sinkhorn_lambda,
                              settings.sinkhorn_iters)
        k = min(settings.topk, len(common))
        return [[int(common[j]) for j in _top(row, k)] for row in plan]
    k = min(settings.topk, logits.shape[1])
    return [[int(j) for j in _top(row, k)] for row in logits]


def rank_by_relevance(entries: list[int], image_embedding: np.ndarray, bank_embeddings: np.ndarray,
                      logit_scale: float) -> tuple[list[int], list[float]]:
    """Unique entries ranked by logit_scale * cos(entry, image), best first, with those scores."""
    unique = list(dict.fromkeys(entries))
    if not unique:
        return [], []
    scores = logit_scale * (bank_embeddings[unique].astype(np.float64) @ image_embedding.astype(np.float64))
    order = _top(scores, len(unique))
    return [unique[i] for i in order], [float(scores[i]) for i in order]
