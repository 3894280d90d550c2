"""Write the hierarchy T into the database and read it back: `load_hierarchy` gives the one in-memory
`StoredHierarchy` that the engine, the queries and the web explorer share."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from functools import cached_property

import duckdb
import numpy as np
import pyarrow as pa
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order

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


def stored_vocabulary(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The vocabulary row, with `hierarchy` ('reference' or 'extended'; 'extended' for a database made
    before the choice existed)."""
    row = con.execute(
        "SELECT name, source, n_words, missing_words, n_synsets, wordnet_version, words_sha256, "
        "coalesce(hierarchy, ?) FROM vocabulary", [LEGACY_HIERARCHY]
    ).fetchone()
    if row is None:
        return None
    keys = ("name", "source", "n_words", "missing_words", "n_synsets", "wordnet_version", "words_sha256", "hierarchy")
    return dict(zip(keys, row))


#: The text columns of `synsets` that StoredHierarchy loads on first use, and their conversion to lists.
_TEXT_COLUMNS = {
    "lemmas": None,  # read as flat (synset_id, lemma) rows
    "definition": lambda col: col.tolist(),
    "lexname": lambda col: col.tolist(),
    "is_word_sense": lambda col: [bool(x) for x in col.tolist()],
}


class StoredHierarchy:
    """The hierarchy T of one database, loaded once and held in memory: the one copy every reader uses.

    The engine takes `propagation_levels`; queries, `explain` and the web explorer take names, is-a
    lists, paths and the text columns. It lives here, next to `write_hierarchy`, so that the columns of
    `synsets` and `isa_edges` are named in one module, and every layer above the store (engine, query,
    web) can import it without importing each other. T has ~7k synsets by default and ~82k with all
    nouns, so lookups are arrays and lists, not SQL per node.

    Names, depths and the edges are loaded at once (what the engine and a tree walk need); each text
    column (lemmas, definitions, lexnames, is_word_sense) on first use, through the connection the
    hierarchy was loaded from (keep it open while you use them), or all at once with `load_text`.
    """

    def __init__(self, names: list[str], parent: np.ndarray, child: np.ndarray, depth: np.ndarray | None = None,
                 con: duckdb.DuckDBPyConnection | None = None):
        self.names = names
        order = np.lexsort((child, parent))  # edges by (parent, child): children lists in id order
        self.parent = np.asarray(parent, np.int32)[order]   # edge parent ids
        self.child = np.asarray(child, np.int32)[order]     # edge child ids
        #: Shortest is-a distance to entity.n.01, as Python ints (JSON-ready).
        self.depth: list[int] = _shortest_depths(self) if depth is None else np.asarray(depth).tolist()
        self._con = con
        self._text: dict[str, list] = {}  # text columns loaded so far

    @classmethod
    def from_edges(cls, names: list[str], parent: np.ndarray, child: np.ndarray) -> StoredHierarchy:
        """A hierarchy that is not in a database (tests, toy models): depths from the edges, no text."""
        h = cls(list(names), parent, child)
        n = h.size
        h._text = {"lemmas": [[] for _ in range(n)], "definition": [""] * n, "lexname": [""] * n,
                   "is_word_sense": [False] * n}
        return h

    @property
    def size(self) -> int:
        return len(self.names)

    @cached_property
    def id_of(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    # -- is-a lists ---------------------------------------------------------------------------------
    @cached_property
    def children(self) -> Adjacency:
        """Each synset's direct children, by id: `children[sid]` is a list."""
        return Adjacency(self.child.tolist(), np.searchsorted(self.parent, np.arange(self.size + 1)).tolist())

    @cached_property
    def parents(self) -> Adjacency:
        """Each synset's direct parents, by id: `parents[sid]` is a list."""
        order = np.lexsort((self.parent, self.child))
        child = self.child[order]
        return Adjacency(self.parent[order].tolist(), np.searchsorted(child, np.arange(self.size + 1)).tolist())

    @cached_property
    def _down(self) -> csr_matrix:
        n = self.size
        return csr_matrix((np.ones(len(self.child), np.int8), (self.parent, self.child)), shape=(n, n))

    def descendants(self, sid: int) -> np.ndarray:
        """The synset and all its descendants, as sorted int64 ids (what the closure table holds)."""
        reached = breadth_first_order(self._down, int(sid), directed=True, return_predecessors=False)
        return np.sort(reached.astype(np.int64))

    def n_descendants(self, sid: int) -> int:
        return len(self.descendants(sid)) - 1

    def ancestors(self, sid: int) -> list[tuple[int, int]]:
        """(ancestor id, shortest is-a distance) of every ancestor, nearest first, ties by id."""
        seen = {int(sid): 0}
        queue = deque([int(sid)])
        while queue:
            node = queue.popleft()
            for p in self.parents[node]:
                if p not in seen:
                    seen[p] = seen[node] + 1
                    queue.append(p)
        del seen[int(sid)]
        return sorted(seen.items(), key=lambda item: (item[1], item[0]))

    def path_ids(self, sid: int) -> list[int]:
        """The shortest is-a path from the synset up to entity.n.01, as ids (ties broken by name)."""
        path = [int(sid)]
        while self.parents[path[-1]]:
            path.append(min(self.parents[path[-1]], key=lambda p: (self.depth[p], self.names[p])))
        return path

    def path_to_root(self, sid: int) -> list[str]:
        """The names of `path_ids`, the synset first."""
        return [self.names[i] for i in self.path_ids(sid)]

    def is_chain(self, ids: list[int | None]) -> bool:
        """Whether `ids` is an is-a chain starting at a root (a synset without parents)."""
        return bool(ids) and None not in ids and not self.parents[ids[0]] and all(
            b in self.children[a] for a, b in zip(ids, ids[1:]))

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
        children = self.children
        for node in reversed(self._topological_order()):
            if children[node]:
                height[node] = 1 + max(height[c] for c in children[node])
        edge_height = height[self.parent]
        levels = []
        for h in range(1, int(height.max(initial=0)) + 1):
            sel = edge_height == h
            if sel.any():
                levels.append((self.parent[sel].astype(np.int64), self.child[sel].astype(np.int64)))
        return levels

    def _topological_order(self) -> list[int]:
        n = self.size
        indeg = np.bincount(self.child, minlength=n).tolist()
        children = self.children
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

    # -- names --------------------------------------------------------------------------------------
    def resolve(self, name: str) -> int:
        """The id of a synset name; unknown names get the nearest matches."""
        sid = self.id_of.get(name)
        if sid is None:
            raise NotFoundError(did_you_mean(name, self.names, "synset", "(find names with: convis-db concepts WORD)"))
        return sid

    # -- text columns (each loaded on first use) -------------------------------------------------------
    def load_text(self) -> StoredHierarchy:
        """Load every text column now, in one query (the web explorer does, before serving threads)."""
        self._text_columns(*_TEXT_COLUMNS)
        return self

    def _text_columns(self, *columns: str) -> None:
        missing = [c for c in columns if c not in self._text]
        if not missing:
            return
        if self._con is None:
            raise DatabaseError("this hierarchy was not loaded from a database, so it has no lemmas or definitions.")
        if "lemmas" in missing:  # flat (id, lemma) rows convert to lists twice as fast as list cells
            missing.remove("lemmas")
            rows = self._con.execute(
                "SELECT synset_id, lemma FROM (SELECT synset_id, unnest(lemmas) AS lemma, "
                "generate_subscripts(lemmas, 1) AS i FROM synsets) ORDER BY synset_id, i").fetchnumpy()
            bounds = np.searchsorted(rows["synset_id"], np.arange(self.size + 1)).tolist()
            self._text["lemmas"] = _split_lists(rows["lemma"].tolist(), bounds)
        if missing:
            sql = f"SELECT {', '.join(missing)} FROM synsets ORDER BY synset_id"  # names from _TEXT_COLUMNS only
            rows = self._con.execute(sql).fetchnumpy()
            for c in missing:
                self._text[c] = _TEXT_COLUMNS[c](rows[c])

    def _text_column(self, column: str) -> list:
        self._text_columns(column)
        return self._text[column]

    def text_of(self, ids: list[int]) -> dict[int, dict]:
        """{id: {lemmas, definition, lexname, is_word_sense}} of a few synsets: from memory once
        `load_text` has run, else in one query for just those (a one-shot `explain` or `concepts`
        needs a page's worth, not all ~82k)."""
        if all(c in self._text for c in _TEXT_COLUMNS) or self._con is None:
            return {i: {c: self._text_column(c)[i] for c in _TEXT_COLUMNS} for i in ids}
        # IN (unnest) is a hash join; list_contains(?, id) scanned the list once per synset (4x slower).
        rows = self._con.execute(
            f"SELECT synset_id, {', '.join(_TEXT_COLUMNS)} FROM synsets WHERE synset_id IN (SELECT unnest(?))",
            [sorted(set(ids))]).fetchall()
        return {r[0]: {"lemmas": list(r[1]), "definition": r[2], "lexname": r[3], "is_word_sense": bool(r[4])}
                for r in rows}

    lemmas = property(lambda self: self._text_column("lemmas"), doc="Each synset's lemmas (list of str).")
    definitions = property(lambda self: self._text_column("definition"), doc="Each synset's WordNet definition.")
    lexnames = property(lambda self: self._text_column("lexname"), doc="Each synset's lexicographer file.")
    is_word_sense = property(lambda self: self._text_column("is_word_sense"),
                             doc="Whether each synset is a noun sense of a vocabulary word (not only an ancestor).")

    @cached_property
    def lemma_keys(self) -> list[tuple[str, int]]:
        """Sorted (lower-cased name or lemma, synset id) pairs, for prefix search by bisection."""
        keys = set(zip(map(str.lower, self.names), range(self.size)))
        keys.update((lemma.lower(), sid) for sid, lemmas in enumerate(self.lemmas) for lemma in lemmas)
        return sorted(keys)


class Adjacency(Sequence):
    """Per synset, the list of its neighbours, sliced on demand from one flat list (compressed rows):
    building ~82k small lists up front cost more than a whole `concepts` query."""

    def __init__(self, values: list[int], bounds: list[int]):
        self._values, self._bounds = values, bounds

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def __getitem__(self, sid: int) -> list[int]:
        return self._values[self._bounds[sid]:self._bounds[sid + 1]]


def _split_lists(values: list, bounds: list[int]) -> list[list]:
    return [values[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def _shortest_depths(h: StoredHierarchy) -> list[int]:
    """Shortest is-a distance from a root, for a hierarchy given only its edges."""
    n = h.size
    depth = np.full(n, -1, np.int64)
    roots = np.setdiff1d(np.arange(n), h.child)
    depth[roots] = 0
    frontier = roots.tolist()
    children = h.children
    while frontier:
        nxt = []
        for node in frontier:
            for c in children[node]:
                if depth[c] < 0:
                    depth[c] = depth[node] + 1
                    nxt.append(c)
        frontier = nxt
    return depth.tolist()


def synset_count(con: duckdb.DuckDBPyConnection) -> int:
    """|T|: the number of synsets, the denominator of every rank fraction (rank_sim = rank_less / |T|).
    The one place Python reads it from a database (the schema's views count it in their own SQL)."""
    return int(con.execute("SELECT count(*) FROM synsets").fetchall()[0][0])  # fetched to the end (DuckDB 2)


def load_hierarchy(con: duckdb.DuckDBPyConnection) -> StoredHierarchy:
    """T from the database: one query for names and depths, one for the edges (as numpy arrays)."""
    rows = con.execute("SELECT synset_id, name, depth FROM synsets ORDER BY synset_id").fetchnumpy()
    names = rows["name"].tolist()
    if not names:
        raise DatabaseError("the database has no hierarchy yet; run convis-db init first.")
    if int(rows["synset_id"][-1]) != len(names) - 1:
        raise DatabaseError("the synset ids are not dense 0..n-1; the hierarchy is corrupt. Rebuild it with init.")
    edges = con.execute("SELECT parent_id, child_id FROM isa_edges").fetchnumpy()
    return StoredHierarchy(names, edges["parent_id"], edges["child_id"], rows["depth"], con)


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
