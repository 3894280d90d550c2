"""Write the hierarchy T into the database and read it back as arrays for the engine and queries."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import duckdb
import numpy as np
import pyarrow as pa

from convis_db.errors import DatabaseError, NotFoundError, UsageError, did_you_mean
from convis_db.wordnet.hierarchy import LEGACY_HIERARCHY, Hierarchy
from convis_db.store.arrow_io import insert_arrow
from convis_db.store.transaction import transaction
from convis_db.wordnet.vocab import Vocabulary

log = logging.getLogger(__name__)


def write_hierarchy(con: duckdb.DuckDBPyConnection, h: Hierarchy, vocab: Vocabulary, wordnet_version: str) -> None:
    """Store T in one transaction (vocabulary, synsets, edges, closure)."""
    anc, desc, dist = h.closure()
    synsets = pa.table({
        "synset_id": pa.array([s.synset_id for s in h.synsets], pa.int32()),
        "name": [s.name for s in h.synsets],
        "wn_offset": pa.array([s.offset for s in h.synsets], pa.int32()),
        "lemmas": [s.lemmas for s in h.synsets],
        "definition": [s.definition for s in h.synsets],
        "depth": pa.array([s.depth for s in h.synsets], pa.int32()),
        "lexname": [s.lexname for s in h.synsets],
        "is_word_sense": [s.synset_id in h.word_sense_ids for s in h.synsets],
    })
    edges = pa.table({
        "parent_id": pa.array([e[0] for e in h.edges], pa.int32()),
        "child_id": pa.array([e[1] for e in h.edges], pa.int32()),
        "kind": [e[2] for e in h.edges],
    })
    closure = pa.table({"ancestor_id": anc, "descendant_id": desc, "distance": dist})
    with transaction(con):
        con.execute(
            "INSERT INTO vocabulary (vocab_id, name, source, words_sha256, n_words, missing_words, n_synsets, "
            "wordnet_version, hierarchy, created_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
            [vocab.name, vocab.source, vocab.fingerprint, h.n_words, h.missing_words, h.size, wordnet_version,
             h.kind],
        )
        for name, table in (("synsets", synsets), ("isa_edges", edges), ("closure", closure)):
            insert_arrow(con, name, table)


def _has_hierarchy_column(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether schema 006 is in: a database opened read-only is not migrated, so an older file lacks it."""
    return con.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'vocabulary' AND column_name = 'hierarchy'"
    ).fetchone()[0] > 0


def stored_vocabulary(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The vocabulary row, with `hierarchy` ('reference' or 'extended'; 'extended' for a database made
    before the choice existed, migrated or not)."""
    hierarchy = "coalesce(hierarchy, ?)" if _has_hierarchy_column(con) else "?"
    row = con.execute(
        "SELECT name, source, n_words, missing_words, n_synsets, wordnet_version, words_sha256, "
        f"{hierarchy} FROM vocabulary", [LEGACY_HIERARCHY]
    ).fetchone()
    if row is None:
        return None
    keys = ("name", "source", "n_words", "missing_words", "n_synsets", "wordnet_version", "words_sha256", "hierarchy")
    return dict(zip(keys, row))


@dataclass
class HierarchyArrays:
    """T as arrays: names by id, edges, and helpers for propagation and name lookup."""

    names: list[str]
    parent: np.ndarray   # int32 edge parent ids
    child: np.ndarray    # int32 edge child ids

    @property
    def size(self) -> int:
        return len(self.names)

    @cached_property
    def id_of(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    @cached_property
    def propagation_levels(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Edges grouped by the parent's height (longest path down to a leaf), lowest first.

        Processing the groups in order, `value[parent] = max(value[parent], value[child])` over each
        group's edges leaves every synset holding the max over all its descendants: a child's height is
        always below its parent's, so a child is final before any of its parents reads it.
        """
        n = self.size
        height = np.zeros(n, np.int64)
        # Longest-path heights by repeated relaxation in topological order.
        order = _topological_order(n, self.parent, self.child)
        children: list[list[int]] = [[] for _ in range(n)]
        for p, c in zip(self.parent.tolist(), self.child.tolist()):
            children[p].append(c)
        for node in reversed(order):
            if children[node]:
                height[node] = 1 + max(height[c] for c in children[node])
        edge_height = height[self.parent]
        levels = []
        for h in range(1, int(height.max(initial=0)) + 1):
            sel = edge_height == h
            if sel.any():
                levels.append((self.parent[sel].astype(np.int64), self.child[sel].astype(np.int64)))
        return levels

    def resolve(self, name: str) -> int:
        """The id of a synset name; unknown names get the nearest matches."""
        sid = self.id_of.get(name)
        if sid is None:
            raise NotFoundError(did_you_mean(name, self.names, "synset", "(find names with: convis-db concepts WORD)"))
        return sid


def _topological_order(n: int, parent: np.ndarray, child: np.ndarray) -> list[int]:
    indeg = np.zeros(n, np.int64)
    np.add.at(indeg, child, 1)
    children: list[list[int]] = [[] for _ in range(n)]
    for p, c in zip(parent.tolist(), child.tolist()):
        children[p].append(c)
    stack = [i for i in range(n) if indeg[i] == 0]
    order = []
    while stack:
        node = stack.pop()
        order.append(node)
        for c in children[node]:
            indeg[c] -= 1
            if indeg[c] == 0:
                stack.append(c)
    if len(order) != n:
        raise DatabaseError("the is-a edges contain a cycle; the hierarchy is corrupt. Rebuild it with init.")
    return order


def load_hierarchy(con: duckdb.DuckDBPyConnection) -> HierarchyArrays:
    names = [r[0] for r in con.execute("SELECT name FROM synsets ORDER BY synset_id").fetchall()]
    if not names:
        raise DatabaseError("the database has no hierarchy yet; run convis-db init first.")
    edges = con.execute("SELECT parent_id, child_id FROM isa_edges").fetchnumpy()
    return HierarchyArrays(names, edges["parent_id"].astype(np.int32), edges["child_id"].astype(np.int32))


def find_synset_name(con: duckdb.DuckDBPyConnection, name: str) -> int:
    """Resolve a concept argument to a synset id, with nearest matches and out-of-vocabulary hints."""
    name = name.strip()
    row = con.execute("SELECT synset_id FROM synsets WHERE name = ?", [name]).fetchone()
    if row:
        return int(row[0])
    # A bare word: take its first sense in T when unambiguous enough to be useful.
    candidates = con.execute(
        "SELECT name FROM synsets WHERE list_contains(lemmas, ?) ORDER BY name", [name.replace(" ", "_")]
    ).fetchall()
    if candidates:
        names = ", ".join(c[0] for c in candidates[:8])
        raise UsageError(f"{name!r} is a word, not a synset name; pick a sense: {names}")
    all_names = [r[0] for r in con.execute("SELECT name FROM synsets").fetchall()]
    msg = did_you_mean(name, all_names, "concept")
    if _looks_like_synset(name) and _in_wordnet(name):
        vocab = stored_vocabulary(con)
        reference = vocab is not None and vocab["hierarchy"] == "reference"
        vocab_name = f" ({vocab['name']})" if vocab else ""
        msg = (f"{name} is a WordNet synset but not in this database's vocabulary{vocab_name}, so it has no scores here. "
               "Build a database whose vocabulary contains one of its words (init --vocab FILE, or --vocab all-nouns)"
               + ("; instances such as people and places are in T only with init --hierarchy extended." if reference
                  else "."))
    raise NotFoundError(msg)


def _in_wordnet(name: str) -> bool:
    """Whether WordNet knows the synset (only asked on the error path; False when WordNet is absent)."""
    try:
        from convis_db.wordnet.source import open_wordnet

        open_wordnet().synset(name)
        return True
    except Exception:  # noqa: BLE001 - no WordNet here, or no such synset: either way, not known
        return False


def _looks_like_synset(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 3 and parts[1] in ("n", "v", "a", "r", "s") and parts[2].isdigit()


def descendant_ids(con: duckdb.DuckDBPyConnection, synset_id: int) -> np.ndarray:
    """The synset and all its descendants in T (from the closure table)."""
    rows = con.execute("SELECT descendant_id FROM closure WHERE ancestor_id = ? ORDER BY descendant_id",
                       [synset_id]).fetchnumpy()
    return rows["descendant_id"].astype(np.int64)
