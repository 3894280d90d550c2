"""`explain`: what CLIP sees in an image, as a tree from entity.n.01 down.

Each node's children are ranked by the image's score for them (the peak of their max_rank_sim map,
which covers their descendants), like the paper's hierarchical browser: follow the best child to
find the most specific concept the model supports.
"""

from __future__ import annotations

import duckdb
import numpy as np

from convis_db.engine.pixels import original_point
from convis_db.store.image_store import StoredImage, get_image, work_peak_select

ROOT = "entity.n.01"


class ImageTree:
    """An image's scores and the is-a children lists, loaded once."""

    def __init__(self, con: duckdb.DuckDBPyConnection, image: StoredImage):
        self.image = image
        rows = con.execute(
            f"SELECT synset_id, score, {work_peak_select(con, 'work_peak_x', 'work_peak_y')}, self_score "
            "FROM image_scores WHERE image_id = ? ORDER BY synset_id",
            [image.image_id]).fetchnumpy()
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
        self.score = np.zeros(n)
        self.self_score = np.zeros(n)
        self.peak = np.zeros((n, 2), np.int64)
        ids = rows["synset_id"]
        self.score[ids] = rows["score"]
        self.self_score[ids] = rows["self_score"]
        self.peak[ids, 0], self.peak[ids, 1] = rows["work_peak_x"], rows["work_peak_y"]
        self.con = con
        self.names = con.execute("SELECT name FROM synsets ORDER BY synset_id").fetchnumpy()["name"].tolist()
        edges = con.execute("SELECT parent_id, child_id FROM isa_edges ORDER BY parent_id").fetchnumpy()
        parents, kids = edges["parent_id"], edges["child_id"]
        bounds = np.searchsorted(parents, np.arange(n + 1))
        self.children = [kids[bounds[i]:bounds[i + 1]].tolist() for i in range(n)]

    def definitions(self, ids: list[int]) -> dict[int, str]:
        """Definitions of the given synsets, in one query."""
        # IN (unnest) is a hash join; list_contains(?, id) scanned the list once per synset (4x slower).
        rows = self.con.execute("SELECT synset_id, definition FROM synsets WHERE synset_id IN (SELECT unnest(?))",
                                [sorted(set(ids))]).fetchall()
        return dict(rows)

    def node(self, sid: int) -> dict:
        s = self.image.scale
        return {"synset": self.names[sid], "synset_id": sid, "score": float(self.score[sid]),
                "self_score": float(self.self_score[sid]),
                "peak_x": original_point(self.peak[sid, 0], s),
                "peak_y": original_point(self.peak[sid, 1], s),
                "n_children": len(self.children[sid])}

    def ranked_children(self, sid: int) -> list[int]:
        return sorted(self.children[sid], key=lambda c: (-self.score[c], -self.self_score[c], self.names[c]))

    def tree(self, root: int, depth: int, top: int) -> dict:
        """The tree below `root`, `top` best children per node, `depth` levels, with definitions."""
        tree = self._subtree(root, depth, top)
        nodes: list[dict] = []
        stack = [tree]
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(node["children"])
        defs = self.definitions([n["synset_id"] for n in nodes])
        for node in nodes:
            node["definition"] = defs[node["synset_id"]]
        return tree

    def _subtree(self, root: int, depth: int, top: int) -> dict:
        node = self.node(root)
        node["children"] = ([self._subtree(c, depth - 1, top) for c in self.ranked_children(root)[:top]]
                            if depth > 0 else [])
        return node


def explain_image(con: duckdb.DuckDBPyConnection, image_ref: str, depth: int = 4, top: int = 3,
                  root: str = ROOT) -> dict:
    image = get_image(con, image_ref)
    tree = ImageTree(con, image)
    from convis_db.store.hierarchy_store import find_synset_name

    root_id = find_synset_name(con, root)
    return {"image_id": image.image_id, "path": image.path, "tree": tree.tree(root_id, depth, top)}


def render_tree(node: dict, indent: str = "") -> list[str]:
    lines = [f"{indent}{node['synset']:<{max(1, 40 - len(indent))}} score {node['score']:.4f}  "
             f"self {node['self_score']:.4f}  peak ({node['peak_x']}, {node['peak_y']})"]
    for child in node.get("children", []):
        lines.extend(render_tree(child, indent + "  "))
    return lines
