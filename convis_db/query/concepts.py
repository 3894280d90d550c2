"""Find synsets by name, lemma or definition words, and describe their place in T."""

from __future__ import annotations

import re
from functools import cached_property

import duckdb

from convis_db.errors import NotFoundError, nearest

ROOT = "entity.n.01"


class ConceptIndex:
    """Synset names, depths and parents of T held in memory (T has ~7k to ~82k synsets)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        rows = con.execute("SELECT synset_id, name, depth FROM synsets ORDER BY synset_id").fetchall()
        self.names = [r[1] for r in rows]
        self.depth = [r[2] for r in rows]
        self.id_of = {n: i for i, n in enumerate(self.names)}
        self.parents: list[list[int]] = [[] for _ in rows]
        self.children: list[list[int]] = [[] for _ in rows]
        for p, c in con.execute("SELECT parent_id, child_id FROM isa_edges ORDER BY parent_id, child_id").fetchall():
            self.parents[c].append(p)
            self.children[p].append(c)

    @cached_property
    def n_descendants(self) -> dict[int, int]:
        return dict(con_rows(self.con, "SELECT ancestor_id, count(*) - 1 FROM closure GROUP BY ancestor_id"))

    def path_to_root(self, sid: int) -> list[str]:
        """The shortest is-a path from the synset up to entity.n.01 (ties broken by name)."""
        path = [sid]
        while self.parents[path[-1]]:
            path.append(min(self.parents[path[-1]], key=lambda p: (self.depth[p], self.names[p])))
        return [self.names[i] for i in path]

    def ancestors(self, sid: int) -> list[tuple[int, int]]:
        return [tuple(r) for r in self.con.execute(
            "SELECT ancestor_id, distance FROM closure WHERE descendant_id = ? AND distance > 0 "
            "ORDER BY distance, ancestor_id", [sid]).fetchall()]

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Synset ids matching a query: exact name, then lemma, then definition words."""
        q = query.strip()
        if q in self.id_of:
            return [self.id_of[q]]
        key = re.sub(r"[\s-]+", "_", q.lower())
        by_lemma = [r[0] for r in self.con.execute(
            "SELECT synset_id FROM synsets WHERE list_contains(list_transform(lemmas, lambda x: lower(x)), ?) "
            "ORDER BY split_part(name, '.', 1) <> ?, name", [key, key]).fetchall()]
        if by_lemma:
            return by_lemma[:limit]
        words = [w for w in re.findall(r"[a-z0-9]+", q.lower()) if len(w) > 1]
        if not words:
            return []
        clauses = " AND ".join(["regexp_matches(lower(definition), ?)"] * len(words))
        params = [rf"\b{re.escape(w)}\b" for w in words]
        by_def = [r[0] for r in self.con.execute(
            f"SELECT synset_id FROM synsets WHERE {clauses} ORDER BY depth, name LIMIT {int(limit)}", params).fetchall()]
        return by_def

    def suggestions(self, query: str) -> list[str]:
        key = re.sub(r"[\s-]+", "_", query.strip().lower())
        lemmas = [r[0] for r in self.con.execute("SELECT DISTINCT lower(unnest(lemmas)) FROM synsets").fetchall()]
        close = nearest(key, lemmas + self.names, n=6, cutoff=0.7)
        return close

    def describe(self, sid: int) -> dict:
        row = self.con.execute(
            "SELECT name, lemmas, definition, depth, lexname, is_word_sense FROM synsets WHERE synset_id = ?", [sid]
        ).fetchone()
        return {
            "synset": row[0],
            "lemmas": list(row[1]),
            "definition": row[2],
            "depth": row[3],
            "lexname": row[4],
            "is_word_sense": bool(row[5]),
            "n_parents": len(self.parents[sid]),
            "n_children": len(self.children[sid]),
            "n_descendants": self.n_descendants.get(sid, 0),
            "path": self.path_to_root(sid),
        }


def con_rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


def find_concepts(con: duckdb.DuckDBPyConnection, query: str, limit: int = 20) -> list[dict]:
    """Rows describing the synsets that match; NotFoundError with nearest matches when none do."""
    idx = ConceptIndex(con)
    ids = idx.search(query, limit)
    if not ids:
        close = idx.suggestions(query)
        hint = f"; nearest: {', '.join(close)}" if close else ""
        raise NotFoundError(f"no concept matches {query!r} by name, lemma or definition words{hint}.")
    return [idx.describe(i) for i in ids]


def _one_synset(idx: ConceptIndex, query: str) -> int:
    ids = idx.search(query, limit=2)
    if query.strip() in idx.id_of:
        return idx.id_of[query.strip()]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        close = idx.suggestions(query)
        hint = f"; nearest: {', '.join(close)}" if close else ""
        raise NotFoundError(f"no concept matches {query!r}{hint}.")
    names = ", ".join(idx.names[i] for i in idx.search(query, limit=8))
    raise NotFoundError(f"{query!r} matches several synsets; name one of: {names}")


def concept_children(con: duckdb.DuckDBPyConnection, query: str) -> list[dict]:
    """The direct is-a children of one synset, with their own child and descendant counts."""
    idx = ConceptIndex(con)
    sid = _one_synset(idx, query)
    rows = []
    for c in sorted(idx.children[sid], key=lambda c: idx.names[c]):
        d = idx.describe(c)
        rows.append({"parent": idx.names[sid], **{k: d[k] for k in ("synset", "definition", "n_children", "n_descendants")}})
    return rows


def concept_ancestors(con: duckdb.DuckDBPyConnection, query: str) -> list[dict]:
    """Every ancestor of one synset up to entity.n.01 (all DAG paths), nearest first."""
    idx = ConceptIndex(con)
    sid = _one_synset(idx, query)
    return [{"synset": idx.names[a], "distance": d, "depth": idx.depth[a],
             "definition": idx.describe(a)["definition"]} for a, d in idx.ancestors(sid)]
