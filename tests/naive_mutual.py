"""Naive implementations of the mutual-knowledge steps, written straight from the formulas (loops,
covariance eigendecompositions, explicit tables), for tests/test_mutual.py to compare against."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch


def vit_tokens(visual, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step of an open_clip ViT by hand: (patch tokens after the last block (N, L-1, D), pooled embedding)."""
    n = x.shape[0]
    t = visual.conv1(x)                                        # (N, D, gh, gw)
    t = t.reshape(n, t.shape[1], -1).permute(0, 2, 1)          # (N, gh*gw, D)
    cls = visual.class_embedding.reshape(1, 1, -1).expand(n, 1, -1)
    t = torch.cat([cls, t], dim=1) + visual.positional_embedding
    t = visual.ln_pre(t)
    for block in visual.transformer.resblocks:
        attn = block.attn
        h = block.ln_1(t)
        q, k, v = (h @ attn.in_proj_weight.T + attn.in_proj_bias).chunk(3, dim=-1)
        heads, d = attn.num_heads, t.shape[-1]
        hd = d // heads
        outs = []
        for head in range(heads):
            sl = slice(head * hd, (head + 1) * hd)
            w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd), dim=-1)
            outs.append(w @ v[..., sl])
        o = torch.cat(outs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias
        t = t + o
        t = t + block.mlp(block.ln_2(t))
    pooled = visual.ln_post(t[:, 0]) @ visual.proj
    return t[:, 1:], torch.nn.functional.normalize(pooled, dim=-1)


def pca_scores(x: np.ndarray, k: int) -> np.ndarray:
    """Projections on the top-k eigenvectors of the covariance, each signed so its largest |loading| is positive."""
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / len(x)
    vals, vecs = np.linalg.eigh(cov)
    rank = int((vals > 1e-12 * vals.max()).sum())   # axes without variance are not components
    if rank == 0:
        return np.zeros((len(x), 1))
    order = np.argsort(vals)[::-1][:min(k, rank)]
    cols = []
    for j in order:
        v = vecs[:, j]
        if v[np.argmax(np.abs(v))] < 0:
            v = -v
        cols.append(xc @ v)
    return np.stack(cols, axis=1)


def minmax(s: np.ndarray) -> np.ndarray:
    out = np.zeros_like(s)
    for j in range(s.shape[1]):
        lo, hi = s[:, j].min(), s[:, j].max()
        out[:, j] = (s[:, j] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def components(mask: np.ndarray) -> list[set]:
    """8-connected components by breadth-first search, as sets of (row, col)."""
    seen, comps = set(), []
    rows, cols = mask.shape
    for r in range(rows):
        for c in range(cols):
            if not mask[r, c] or (r, c) in seen:
                continue
            comp, queue = set(), deque([(r, c)])
            seen.add((r, c))
            while queue:
                a, b = queue.popleft()
                comp.add((a, b))
                for da in (-1, 0, 1):
                    for db in (-1, 0, 1):
                        na, nb = a + da, b + db
                        if 0 <= na < rows and 0 <= nb < cols and mask[na, nb] and (na, nb) not in seen:
                            seen.add((na, nb))
                            queue.append((na, nb))
            comps.append(comp)
    return comps


def graph_vector(x: np.ndarray) -> np.ndarray:
    """The second eigenvector of the cosine affinity matrix A = Xn Xn^T, largest |entry| positive."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    vals, vecs = np.linalg.eigh(xn @ xn.T)
    v = vecs[:, np.argsort(vals)[::-1][1]]
    return v if v[np.argmax(np.abs(v))] > 0 else -v


def foreground_values(tokens: np.ndarray, k: int, threshold: float | None, method: str = "pca") -> tuple[np.ndarray, float]:
    """(per patch, the foreground component as it is compared; the level it is compared with)."""
    d = tokens.shape[-1]
    flat = tokens.reshape(-1, d).astype(np.float64)
    s = pca_scores(flat, k) if method == "pca" else graph_vector(flat)[:, None]
    for j in range(s.shape[1]):
        frac = np.mean(s[:, j] > 0)
        if 0.5 < frac < 1.0:
            s[:, j] = -s[:, j]
    return (s[:, 0], 0.0) if threshold is None else (minmax(s)[:, 0], threshold)


def foreground(tokens: np.ndarray, k: int, threshold: float | None, method: str = "pca") -> np.ndarray:
    """The foreground mask: candidates by the component's sign (threshold None) or its min-max level."""
    gh, gw, d = tokens.shape
    values, level = foreground_values(tokens, k, threshold, method)
    cand = (values > level if threshold is None else values >= level).reshape(gh, gw)
    comps = sorted(components(cand), key=len, reverse=True)
    keep = np.zeros((gh, gw), bool)
    if not comps:
        return np.ones((gh, gw), bool)
    for cell in comps[0]:
        keep[cell] = True
    if len(comps) > 1 and len(comps[1]) >= 5:
        for cell in comps[1]:
            keep[cell] = True
    return keep


def pca_labels(tokens: np.ndarray, k: int, threshold: float, use_foreground: bool = True,
               method: str = "pca") -> np.ndarray:
    gh, gw, d = tokens.shape
    fg = foreground(tokens, k, threshold, method) if use_foreground else np.ones((gh, gw), bool)
    feats = tokens.reshape(-1, d).astype(np.float64)[fg.ravel()]
    parts = np.argmax(minmax(pca_scores(feats, k)), axis=1) if len(feats) > 1 else np.zeros(len(feats), int)
    raw = -np.ones(gh * gw, int)
    raw[fg.ravel()] = parts
    out = -np.ones(gh * gw, int)
    for new, old in enumerate(sorted(set(parts.tolist()))):
        out[raw == old] = new
    return out.reshape(gh, gw)


def top_indices(row, k):
    return [j for _, j in sorted(((-float(v), j) for j, v in enumerate(row)))][:k]


def sinkhorn(scores: np.ndarray, epsilon: float, iters: int) -> np.ndarray:
    p = [[math.exp(epsilon * float(v)) for v in row] for row in scores]
    for _ in range(iters):
        p = [[v / sum(row) for v in row] for row in p]
        col = [sum(p[i][j] for i in range(len(p))) for j in range(len(p[0]))]
        p = [[p[i][j] / col[j] for j in range(len(p[0]))] for i in range(len(p))]
    return np.array(p)


def assign(concepts: np.ndarray, bank: np.ndarray, initial_topk: int, topk: int, scale: float, lam: float,
           iters: int, image: np.ndarray | None = None, offset: float | None = None) -> list[list[int]]:
    logits = concepts @ bank.T
    if len(concepts) == 1:
        return [top_indices(logits[0], topk)]
    sets = [set(top_indices(row, initial_topk)) for row in logits]
    common = sorted(set.intersection(*sets)) or sorted(set.union(*sets))
    if image is not None and offset is not None and len(common) > 1:
        # the notebook's relevance filter: cos(text, image) above the candidates' mean minus the offset
        unit = image / np.linalg.norm(image)
        rel = {j: float(bank[j] @ unit) for j in common}
        mean = sum(rel.values()) / len(rel)
        common = [j for j in common if rel[j] > mean - offset]
    plan = sinkhorn(logits[:, common] * scale, 1.0 / lam, iters)
    return [[common[j] for j in top_indices(row, topk)] for row in plan]


def mutual_information(x: list, y: list) -> float:
    """The authors' estimate: a table of 1s where texts match, normalised; log N + log M + H."""
    n, m = len(x), len(y)
    table = np.zeros((n, m))
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            if a == b:
                table[i, j] = 1
    if table.sum() == 0:
        return 0.0
    table /= table.sum()
    h = -np.sum(table * np.log(table + 1e-9))
    return float(np.log(n) + np.log(m) + h)


def mi_curve(x: list, y: list) -> list[float]:
    gone = -10**9
    cur = list(x)
    out = [mutual_information(cur, y)]
    for i in range(len(cur)):
        cur[i] = gone
        out.append(mutual_information(cur, y))
    return out


def pca_labels_together(tokens: list[np.ndarray], k: int, threshold: float, method: str = "pca") -> list[np.ndarray]:
    """Several images: one decomposition (and min-max) over all patches for the foreground and the parts."""
    d = tokens[0].shape[-1]
    flat = np.concatenate([t.reshape(-1, d) for t in tokens]).astype(np.float64)
    s = pca_scores(flat, k) if method == "pca" else graph_vector(flat)[:, None]
    for j in range(s.shape[1]):
        frac = np.mean(s[:, j] > 0)
        if 0.5 < frac < 1.0:
            s[:, j] = -s[:, j]
    first = s[:, 0] if threshold is None else minmax(s)[:, 0]
    level = 0.0 if threshold is None else threshold
    fgs, start = [], 0
    for t in tokens:
        gh, gw = t.shape[:2]
        part = first[start:start + gh * gw]
        cand = (part > level if threshold is None else part >= level).reshape(gh, gw)
        start += gh * gw
        comps = sorted(components(cand), key=len, reverse=True)
        keep = np.zeros((gh, gw), bool)
        for comp in comps[:1] + [c for c in comps[1:2] if len(c) >= 5]:
            for cell in comp:
                keep[cell] = True
        fgs.append(keep if keep.any() else np.ones((gh, gw), bool))
    feats = np.concatenate([t.reshape(-1, d)[fg.ravel()] for t, fg in zip(tokens, fgs)]).astype(np.float64)
    parts = np.argmax(minmax(pca_scores(feats, k)), axis=1)
    out, start = [], 0
    for t, fg in zip(tokens, fgs):
        gh, gw = t.shape[:2]
        n = int(fg.sum())
        raw = -np.ones(gh * gw, int)
        raw[fg.ravel()] = parts[start:start + n]
        start += n
        lab = -np.ones(gh * gw, int)
        for new, old in enumerate(sorted(set(raw[raw >= 0].tolist()))):
            lab[raw == old] = new
        out.append(lab.reshape(gh, gw))
    return out
