"""`explain`: what CLIP sees in an image, as a tree from entity.n.01 down.

Each node's children are ranked by the image's score for them (the peak of their max_rank_sim map,
which covers their descendants), like the paper's hierarchical browser: follow the best child to
find the most specific concept the model supports.

`ImageScores` is the one per-image view of the stored scores: the CLI's `explain`, the Python API and
the web explorer all build their nodes and rank children through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from convis_db.engine.pixels import original_point
from convis_db.store.hierarchy_store import StoredHierarchy, find_synset_name, load_hierarchy
from convis_db.store.image_store import StoredImage, get_image
from convis_db.wordnet.hierarchy import ROOT

__all__ = ["ROOT", "ImageScores", "explain_image", "load_image_scores", "render_tree"]


@dataclass
class ImageScores:
    """One image's stored scores for every synset of T, indexed by synset id (0 where not stored)."""

    hierarchy: StoredHierarchy
    image: StoredImage
    score: np.ndarray             # max_rank_sim map peak (covers the descendants)
    self_score: np.ndarray        # rank_sim map peak (the synset alone)
    peak: np.ndarray              # (n, 2) x, y of the score's peak, in working pixels
    image_score: np.ndarray       # image-level max_rank_sim; NaN where the image has none
    image_self_score: np.ndarray  # image-level rank_sim; NaN where the image has none

    @property
    def nbytes(self) -> int:
        return (self.score.nbytes + self.self_score.nbytes + self.peak.nbytes + self.image_score.nbytes
                + self.image_self_score.nbytes)

    @property
    def has_image_level(self) -> bool:
        return bool(np.isfinite(self.image_score).any())

    def node(self, sid: int, image_level: bool = False) -> dict:
        """A synset's scores on this image, the peak in original pixels; `image_level` adds the
        image-level scores (None where not computed)."""
        h = self.hierarchy
        out = {"synset": h.names[sid], "score": float(self.score[sid]), "self_score": float(self.self_score[sid])}
        if image_level:
            out |= self.image_level(sid)
        out["peak_x"] = original_point(self.peak[sid, 0], self.image.scale)
        out["peak_y"] = original_point(self.peak[sid, 1], self.image.scale)
        out["n_children"] = len(h.children[sid])
        return out

    def image_level(self, sid: int) -> dict:
        """The image-level scores of a synset (None where the image has none)."""
        return {"image_score": _level(self.image_score[sid]), "image_self_score": _level(self.image_self_score[sid])}

    def ranked_children(self, sid: int) -> list[int]:
        """Children by the image's score (ties: own score, then name)."""
        names = self.hierarchy.names
        return sorted(self.hierarchy.children[sid], key=lambda c: (-self.score[c], -self.self_score[c], names[c]))

    def tree(self, root: int, depth: int, top: int) -> dict:
        """The tree below `root`, `top` best children per node, `depth` levels, with definitions."""
        tree = self._subtree(root, depth, top)
        nodes, stack = [], [tree]
        while stack:
            nodes.append(stack.pop())
            stack.extend(nodes[-1]["children"])
        text = self.hierarchy.text_of([n["synset_id"] for n in nodes])
        for node in nodes:
            node["definition"] = text[node["synset_id"]]["definition"]
        return tree

    def _subtree(self, root: int, depth: int, top: int) -> dict:
        node = {"synset": self.hierarchy.names[root], "synset_id": root} | self.node(root)
        node["children"] = ([self._subtree(c, depth - 1, top) for c in self.ranked_children(root)[:top]]
                            if depth > 0 else [])
        return node


def _level(value: float) -> float | None:
    """An image-level score for JSON: None where not computed."""
    return float(value) if np.isfinite(value) else None


def load_image_scores(con: duckdb.DuckDBPyConnection, image: StoredImage, hierarchy: StoredHierarchy,
                      image_level: bool = True) -> ImageScores:
    """The image's rows of `image_scores` as arrays (the one reader of those columns for trees).

    `image_level`: whether to read the image-level scores (NaN where not read, and for images
    ingested without them).
    """
    n = hierarchy.size
    level = ("image_max_rank_less, image_rank_less" if image_level
             else "NULL::INTEGER AS image_max_rank_less, NULL::INTEGER AS image_rank_less")
    rows = con.execute(
        f"SELECT synset_id, score, work_peak_x, work_peak_y, self_score, {level} "
        "FROM image_scores "  # fixed columns
        "WHERE image_id = ?", [image.image_id]).fetchnumpy()
    out = ImageScores(hierarchy, image, np.zeros(n, np.float64), np.zeros(n, np.float64), np.zeros((n, 2), np.int64),
                      np.full(n, np.nan), np.full(n, np.nan))
    ids = rows["synset_id"].astype(np.int64)
    out.score[ids] = rows["score"]
    out.self_score[ids] = rows["self_score"]
    out.peak[ids, 0], out.peak[ids, 1] = rows["work_peak_x"], rows["work_peak_y"]
    for target, column in ((out.image_score, "image_max_rank_less"), (out.image_self_score, "image_rank_less")):
        values = np.ma.filled(np.ma.asarray(rows[column]).astype(np.float64), np.nan)
        target[ids] = values / n
    return out


def explain_image(con: duckdb.DuckDBPyConnection, image_ref: str, depth: int = 4, top: int = 3,
                  root: str = ROOT, hierarchy: StoredHierarchy | None = None) -> dict:
    image = get_image(con, image_ref)
    h = hierarchy or load_hierarchy(con)
    scores = load_image_scores(con, image, h, image_level=False)  # the tree shows map scores only
    root_id = find_synset_name(con, root)  # one indexed lookup; its error names the nearest synsets or a word's senses
    return {"image_id": image.image_id, "path": image.path, "tree": scores.tree(root_id, depth, top)}


def render_tree(node: dict, indent: str = "") -> list[str]:
    lines = [f"{indent}{node['synset']:<{max(1, 40 - len(indent))}} score {node['score']:.4f}  "
             f"self {node['self_score']:.4f}  peak ({node['peak_x']}, {node['peak_y']})"]
    for child in node.get("children", []):
        lines.extend(render_tree(child, indent + "  "))
    return lines
