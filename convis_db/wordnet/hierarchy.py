"""The hierarchy T of the paper: every is-a path from each noun sense of the vocabulary to entity.n.01.

T is a DAG (a synset can have several hypernyms, and instance hypernyms count as is-a): every
parent is kept. Synsets get dense ids 0..n-1 in name order, which are also the rows of the
definition-embedding matrix.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from convis_db.wordnet.vocab import Vocabulary, noun_synsets_for_word

log = logging.getLogger(__name__)

ROOT = "entity.n.01"


@dataclass
class SynsetInfo:
    synset_id: int
    name: str
    offset: int
    lemmas: list[str]
    definition: str
    lexname: str
    depth: int = 0  # shortest is-a distance to entity.n.01


@dataclass
class Hierarchy:
    """T: synsets, parent->child edges (with kind), the word-sense ids, and the words left out."""

    synsets: list[SynsetInfo]
    edges: list[tuple[int, int, str]]  # (parent_id, child_id, 'hypernym' | 'instance')
    word_sense_ids: set[int] = field(default_factory=set)
    missing_words: list[str] = field(default_factory=list)
    n_words: int = 0

    def __post_init__(self) -> None:
        self.by_name = {s.name: s for s in self.synsets}

    @property
    def size(self) -> int:
        return len(self.synsets)

    def parents_of(self) -> list[list[int]]:
        parents: list[list[int]] = [[] for _ in self.synsets]
        for p, c, _ in self.edges:
            parents[c].append(p)
        return parents

    def closure(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ancestor, descendant, distance) for every pair, each synset its own descendant at 0.

        Distances are shortest is-a path lengths, by a breadth-first walk up from each synset.
        """
        parents = self.parents_of()
        anc: list[int] = []
        desc: list[int] = []
        dist: list[int] = []
        for sid in range(self.size):
            seen = {sid: 0}
            queue = deque([sid])
            while queue:
                node = queue.popleft()
                for p in parents[node]:
                    if p not in seen:
                        seen[p] = seen[node] + 1
                        queue.append(p)
            for a, d in seen.items():
                anc.append(a)
                desc.append(sid)
                dist.append(d)
        return np.asarray(anc, np.int32), np.asarray(desc, np.int32), np.asarray(dist, np.int32)


def _is_a_parents(syn) -> list[tuple[object, str]]:
    return [(h, "hypernym") for h in syn.hypernyms()] + [(h, "instance") for h in syn.instance_hypernyms()]


def build_hierarchy(wn, vocab: Vocabulary) -> Hierarchy:
    """Build T for a vocabulary from an nltk WordNet reader."""
    root = wn.synset(ROOT)
    seeds: list = []
    missing: list[str] = []
    if vocab.is_all_nouns:
        seeds = list(wn.all_synsets("n"))
    else:
        for word in vocab.words:
            found = noun_synsets_for_word(wn, word)
            if not found:
                missing.append(word)
            seeds.extend(found)
    # Walk up from every seed; every synset reached lies on an is-a path to entity.n.01.
    members: dict[str, object] = {}
    stack = list(seeds)
    while stack:
        syn = stack.pop()
        name = syn.name()
        if name in members:
            continue
        members[name] = syn
        stack.extend(p for p, _ in _is_a_parents(syn))
    # Keep only synsets that reach the root (all WordNet 3.0 nouns do; guard anyway).
    if ROOT not in members:
        members[ROOT] = root
    names = sorted(members)
    ids = {n: i for i, n in enumerate(names)}
    synsets = [
        SynsetInfo(
            synset_id=ids[n],
            name=n,
            offset=members[n].offset(),
            lemmas=[lem.name() for lem in members[n].lemmas()],
            definition=members[n].definition(),
            lexname=members[n].lexname(),
        )
        for n in names
    ]
    edges: list[tuple[int, int, str]] = []
    for n in names:
        for parent, kind in _is_a_parents(members[n]):
            edges.append((ids[parent.name()], ids[n], kind))
    edges = sorted(set(edges))
    hierarchy = Hierarchy(
        synsets=synsets,
        edges=edges,
        word_sense_ids={ids[s.name()] for s in seeds},
        missing_words=missing,
        n_words=len(vocab.words),
    )
    _set_depths(hierarchy, ids[ROOT])
    unreachable = [s.name for s in synsets if s.depth < 0]
    if unreachable:
        log.warning("%d synsets do not reach %s: %s", len(unreachable), ROOT, unreachable[:5])
    log.info("hierarchy: %d synsets, %d edges, %d words missing", hierarchy.size, len(edges), len(missing))
    return hierarchy


def _set_depths(h: Hierarchy, root_id: int) -> None:
    children: list[list[int]] = [[] for _ in h.synsets]
    for p, c, _ in h.edges:
        children[p].append(c)
    depth = [-1] * h.size
    depth[root_id] = 0
    queue = deque([root_id])
    while queue:
        node = queue.popleft()
        for c in children[node]:
            if depth[c] < 0:
                depth[c] = depth[node] + 1
                queue.append(c)
    for s in h.synsets:
        s.depth = depth[s.synset_id]
