"""Find synsets by name, lemma or definition words, and describe their place in T.

The place in T (parents, children, descendants, paths) comes from the one in-memory hierarchy
(`StoredHierarchy`); pass the one a long-lived caller holds (`Database.hierarchy`) to skip loading it
again. Matching by lemma or definition words stays in SQL, so a one-shot `concepts` never loads every
lemma of ~82k synsets.
"""

from __future__ import annotations

import re

import duckdb

from convis_db.errors import NotFoundError, nearest
from convis_db.store.hierarchy_store import StoredHierarchy, load_hierarchy


def lemma_key(query: str) -> str:
    """A query as a lemma: lower case, spaces and hyphens as underscores."""
    return re.sub(r"[\s-]+", "_", query.strip().lower())


def search(con: duckdb.DuckDBPyConnection, h: StoredHierarchy, query: str, limit: int = 20) -> list[int]:
    """Synset ids matching a query: exact name, then lemma, then definition words."""
    q = query.strip()
    if q in h.id_of:
        return [h.id_of[q]]
    key = lemma_key(q)
    # A query over the text columns stays in SQL: a one-shot `concepts` need not load every lemma.
    by_lemma = [r[0] for r in con.execute(
        "SELECT synset_id FROM synsets WHERE list_contains(list_transform(lemmas, lambda x: lower(x)), ?) "
        "ORDER BY split_part(name, '.', 1) <> ?, name", [key, key]).fetchall()]
    if by_lemma:
        return by_lemma[:limit]
    words = [w for w in re.findall(r"[a-z0-9]+", q.lower()) if len(w) > 1]
    if not words:
        return []
    clauses = " AND ".join(["regexp_matches(lower(definition), ?)"] * len(words))
    params = [rf"\b{re.escape(w)}\b" for w in words]
    return [r[0] for r in con.execute(
        f"SELECT synset_id FROM synsets WHERE {clauses} ORDER BY depth, name LIMIT {int(limit)}", params).fetchall()]


def suggestions(con: duckdb.DuckDBPyConnection, h: StoredHierarchy, query: str) -> list[str]:
    """The lemmas and names nearest to a query that matched nothing."""
    rows = con.execute("SELECT DISTINCT lower(unnest(lemmas)) AS l FROM synsets ORDER BY l").fetchall()
    lemmas = [r[0] for r in rows]
    return nearest(lemma_key(query), lemmas + h.names, n=6, cutoff=0.7)


def describe(h: StoredHierarchy, ids: list[int]) -> list[dict]:
    """Each synset's text columns and place in T (parents, children, descendants, path to the root)."""
    text = h.text_of(ids)
    return [{"synset": h.names[sid], "lemmas": text[sid]["lemmas"], "definition": text[sid]["definition"],
             "depth": h.depth[sid], "lexname": text[sid]["lexname"], "is_word_sense": text[sid]["is_word_sense"],
             "n_parents": len(h.parents[sid]), "n_children": len(h.children[sid]),
             "n_descendants": h.n_descendants(sid), "path": h.path_to_root(sid)} for sid in ids]


def find_concepts(con: duckdb.DuckDBPyConnection, query: str, limit: int = 20,
                  hierarchy: StoredHierarchy | None = None) -> list[dict]:
    """Rows describing the synsets that match; NotFoundError with nearest matches when none do."""
    h = hierarchy or load_hierarchy(con)
    ids = search(con, h, query, limit)
    if not ids:
        close = suggestions(con, h, query)
        hint = f"; nearest: {', '.join(close)}" if close else ""
        raise NotFoundError(f"no concept matches {query!r} by name, lemma or definition words{hint}.")
    return describe(h, ids)


def _one_synset(con: duckdb.DuckDBPyConnection, h: StoredHierarchy, query: str) -> int:
    if query.strip() in h.id_of:
        return h.id_of[query.strip()]
    ids = search(con, h, query, limit=2)
    if len(ids) == 1:
        return ids[0]
    if not ids:
        close = suggestions(con, h, query)
        hint = f"; nearest: {', '.join(close)}" if close else ""
        raise NotFoundError(f"no concept matches {query!r}{hint}.")
    names = ", ".join(h.names[i] for i in search(con, h, query, limit=8))
    raise NotFoundError(f"{query!r} matches several synsets; name one of: {names}")


def concept_children(con: duckdb.DuckDBPyConnection, query: str,
                     hierarchy: StoredHierarchy | None = None) -> list[dict]:
    """The direct is-a children of one synset, with their own child and descendant counts."""
    h = hierarchy or load_hierarchy(con)
    sid = _one_synset(con, h, query)
    kids = sorted(h.children[sid], key=lambda c: h.names[c])
    text = h.text_of(kids)
    return [{"parent": h.names[sid], "synset": h.names[c], "definition": text[c]["definition"],
             "n_children": len(h.children[c]), "n_descendants": h.n_descendants(c)} for c in kids]


def concept_ancestors(con: duckdb.DuckDBPyConnection, query: str,
                      hierarchy: StoredHierarchy | None = None) -> list[dict]:
    """Every ancestor of one synset up to entity.n.01 (all DAG paths), nearest first."""
    h = hierarchy or load_hierarchy(con)
    sid = _one_synset(con, h, query)
    ancestors = h.ancestors(sid)
    text = h.text_of([a for a, _ in ancestors])
    return [{"synset": h.names[a], "distance": d, "depth": h.depth[a], "definition": text[a]["definition"]}
            for a, d in ancestors]
