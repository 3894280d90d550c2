"""The one in-memory hierarchy (StoredHierarchy) against naive walks over the edges and the closure table."""

from __future__ import annotations

import itertools
from collections import deque

import duckdb
import numpy as np
import pytest
from schema_history import apply_migrations_below

from convis_db.errors import NotFoundError
from convis_db.store.db import connect
from convis_db.store.hierarchy_store import descendant_ids, load_hierarchy, write_hierarchy
from convis_db.wordnet.hierarchy import Hierarchy, SynsetInfo
from convis_db.wordnet.vocab import Vocabulary

#            0 entity
#         /  |   \    \
#        1   2    6    \        3 has two parents (1, 2); 5 is reached from 0 directly and via 3;
#         \ / \   |     |       7 has two parents (6, 4) at different depths
#          3   4  |     |
#          |    \ |     |
#          5     7      |
#          '------------'
NAMES = ["entity.n.01", "b_thing.n.01", "a_thing.n.01", "c.n.01", "d.n.01", "e.n.01", "f.n.01", "g.n.01"]
EDGES = [(0, 1), (0, 2), (0, 6), (1, 3), (2, 3), (2, 4), (3, 5), (0, 5), (6, 7), (4, 7)]


def _naive_depths() -> list[int]:
    depth = {0: 0}
    queue = deque([0])
    while queue:
        node = queue.popleft()
        for p, c in EDGES:
            if p == node and c not in depth:
                depth[c] = depth[node] + 1
                queue.append(c)
    return [depth[i] for i in range(len(NAMES))]


def _naive_reach(start: int, up: bool = False) -> dict[int, int]:
    """Every node reachable from `start` (down the edges, or up), with the shortest distance."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for p, c in EDGES:
            src, dst = (c, p) if up else (p, c)
            if src == node and dst not in dist:
                dist[dst] = dist[node] + 1
                queue.append(dst)
    return dist


def _naive_path(sid: int) -> list[str]:
    """Among every shortest upward path to the root, the one whose names, read upwards, sort first."""
    paths, stack = [], [[sid]]
    while stack:
        path = stack.pop()
        parents = [p for p, c in EDGES if c == path[-1]]
        if not parents:
            paths.append(path)
        stack.extend(path + [p] for p in parents)
    shortest = min(len(p) for p in paths)
    return min([NAMES[i] for i in p] for p in paths if len(p) == shortest)


@pytest.fixture
def toy_con(tmp_path):
    depths = _naive_depths()
    synsets = [SynsetInfo(i, n, 1000 + i, [n.split(".")[0], "shared"] if i in (3, 4) else [n.split(".")[0]],
                          f"definition of {n}", "noun.Tops", depths[i]) for i, n in enumerate(NAMES)]
    h = Hierarchy(synsets, [(p, c, "hypernym") for p, c in EDGES], word_sense_ids={3, 5}, n_words=2)
    path = tmp_path / "toy.duckdb"
    con = duckdb.connect(str(path))
    apply_migrations_below(con, 10**6)
    write_hierarchy(con, h, Vocabulary("toy", "test", ["c", "e"]), "3.0")
    con.close()
    con = connect(path)
    yield con
    con.close()


def test_the_hierarchy_matches_naive_walks_over_the_edges(toy_con):
    h = load_hierarchy(toy_con)
    n = len(NAMES)
    assert h.names == NAMES and h.size == n
    assert h.depth == _naive_depths()
    for sid in range(n):
        assert h.children[sid] == sorted(c for p, c in EDGES if p == sid)
        assert sorted(h.parents[sid]) == sorted(p for p, c in EDGES if c == sid)
        want = np.array(sorted(_naive_reach(sid)), np.int64)
        got = h.descendants(sid)
        assert got.dtype == np.int64 and got.tolist() == want.tolist()
        assert got.tolist() == descendant_ids(toy_con, sid).tolist()
        assert h.n_descendants(sid) == len(want) - 1
        up = _naive_reach(sid, up=True)
        del up[sid]
        assert h.ancestors(sid) == sorted(up.items(), key=lambda item: (item[1], item[0]))
        assert h.path_to_root(sid) == _naive_path(sid)
        assert h.path_ids(sid) == [h.id_of[name] for name in h.path_to_root(sid)]


def test_propagation_levels_give_the_max_over_descendants(toy_con):
    h = load_hierarchy(toy_con)
    rng = np.random.default_rng(11)
    for values in itertools.chain([np.eye(len(NAMES), dtype=np.int64)[5] * 9], rng.integers(0, 100, (30, len(NAMES)))):
        got = values.copy()
        for parent, child in h.propagation_levels:
            np.maximum.at(got, parent, got[child])
        want = [max(values[d] for d in _naive_reach(s)) for s in range(len(NAMES))]
        assert got.tolist() == want
    assert sum(len(p) for p, _ in h.propagation_levels) == len(EDGES)


def test_text_columns_lemma_index_and_resolve(toy_con):
    h = load_hierarchy(toy_con)
    assert h.definitions[3] == "definition of c.n.01" and h.lexnames[0] == "noun.Tops"
    assert h.is_word_sense == [i in (3, 5) for i in range(len(NAMES))]
    assert h.lemmas[3] == ["c", "shared"] and h.lemmas[0] == ["entity"]
    assert h.lemma_keys == sorted({(n.lower(), i) for i, n in enumerate(NAMES)}
                                  | {(lemma, i) for i in range(len(NAMES)) for lemma in h.lemmas[i]})
    assert ("shared", 3) in h.lemma_keys and ("shared", 4) in h.lemma_keys
    assert h.resolve("c.n.01") == 3
    with pytest.raises(NotFoundError, match="c.n.01"):
        h.resolve("c.n.1")
    cold = load_hierarchy(toy_con).text_of([3, 0])  # one query for just these
    assert cold == h.load_text().text_of([3, 0]) == {
        3: {"lemmas": ["c", "shared"], "definition": "definition of c.n.01", "lexname": "noun.Tops",
            "is_word_sense": True},
        0: {"lemmas": ["entity"], "definition": "definition of entity.n.01", "lexname": "noun.Tops",
            "is_word_sense": False}}
    assert h.is_chain([0, 2, 4, 7]) and not h.is_chain([2, 4, 7]) and not h.is_chain([0, 1, 4])


def test_the_hierarchy_matches_the_closure_table_of_a_wordnet_database(tiny_db):
    con = connect(tiny_db)
    try:
        h = load_hierarchy(con)
        closure = con.execute("SELECT ancestor_id, descendant_id, distance FROM closure").fetchnumpy()
        below: dict[int, list[int]] = {}
        above: dict[int, list[tuple[int, int]]] = {}
        for a, d, dist in zip(*(closure[k].tolist() for k in ("ancestor_id", "descendant_id", "distance"))):
            below.setdefault(a, []).append(d)
            if dist > 0:
                above.setdefault(d, []).append((a, dist))
        depth = dict(con.execute("SELECT synset_id, depth FROM synsets").fetchall())
        for sid in range(h.size):
            assert h.descendants(sid).tolist() == sorted(below[sid])
            assert h.ancestors(sid) == sorted(above.get(sid, []), key=lambda item: (item[1], item[0]))
            assert h.depth[sid] == depth[sid] == len(h.path_to_root(sid)) - 1
    finally:
        con.close()


def test_concept_queries_read_the_hierarchy(toy_con):
    from convis_db.query.concepts import concept_ancestors, concept_children, find_concepts

    h = load_hierarchy(toy_con)
    for hierarchy in (None, h, h.load_text()):  # cold (loaded per call), warm, warm with every text column
        rows = find_concepts(toy_con, "shared", hierarchy=hierarchy)
        assert [r["synset"] for r in rows] == ["c.n.01", "d.n.01"]
        assert rows[0] == {"synset": "c.n.01", "lemmas": ["c", "shared"], "definition": "definition of c.n.01",
                           "depth": 2, "lexname": "noun.Tops", "is_word_sense": True, "n_parents": 2,
                           "n_children": 1, "n_descendants": 1, "path": ["c.n.01", "a_thing.n.01", "entity.n.01"]}
        assert [(r["synset"], r["n_children"], r["n_descendants"]) for r in
                concept_children(toy_con, "entity.n.01", hierarchy)] == [
            ("a_thing.n.01", 2, 4), ("b_thing.n.01", 1, 2), ("e.n.01", 0, 0), ("f.n.01", 1, 1)]
        assert [(r["synset"], r["distance"]) for r in concept_ancestors(toy_con, "g.n.01", hierarchy)] == [
            ("d.n.01", 1), ("f.n.01", 1), ("entity.n.01", 2), ("a_thing.n.01", 2)]  # ties by id
        with pytest.raises(NotFoundError, match="nearest: shared"):
            find_concepts(toy_con, "shred", hierarchy=hierarchy)
