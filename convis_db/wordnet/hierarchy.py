"""The hierarchy T of the paper: every is-a path from each noun sense of the vocabulary to entity.n.01.

Two ways of building T (`init --hierarchy`), recorded in the vocabulary row:

* `reference` (the default): the authors' T, so that rank_sim (which depends on |T|) is comparable
  with the paper. A word's senses are nltk's raw `wn.synsets(word, pos="n")` (nltk lower-cases and
  applies morphy, nothing more), and only hypernym links are followed, as the authors'
  `find_hypernym_paths` does: a sense reached only through instance hypernyms (a person, a city,
  the general clay.n.03) has no hypernym path to entity.n.01 and is left out. 7,080 synsets for
  the physical-objects vocabulary, the authors' dict_size.
* `extended`: words normalised by `noun_synsets_for_word` (case, spaces, hyphens, accents, closed
  compounds), and instance hypernyms count as is-a (nltk's `hypernym_paths`): 7,343 synsets,
  people and places among them.

T is a DAG (a synset can have several hypernyms): every parent is kept. Synsets get dense ids
0..n-1 in name order, which are also the rows of the definition-embedding matrix.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from convis_db.errors import UsageError
from convis_db.wordnet.vocab import Vocabulary, noun_synsets_for_word, raw_noun_synsets

log = logging.getLogger(__name__)

ROOT = "entity.n.01"
REFERENCE, EXTENDED = "reference", "extended"
HIERARCHY_KINDS = (REFERENCE, EXTENDED)
#: The default for new databases: the authors' T, so that numbers are comparable with the paper.
DEFAULT_HIERARCHY = REFERENCE
#: What a database made before the choice existed holds (schema 006 fills its vocabulary row so).
LEGACY_HIERARCHY = EXTENDED


def check_hierarchy_kind(kind: str) -> str:
    if kind not in HIERARCHY_KINDS:
        raise UsageError(f"--hierarchy {kind!r} is not one of {', '.join(HIERARCHY_KINDS)}.")
    return kind


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
    kind: str = DEFAULT_HIERARCHY   # how T was built: 'reference' or 'extended'

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


class _HypernymPaths:
    """Which synsets have a path of hypernym links (no instance links) up to entity.n.01: the
    authors' criterion (`find_hypernym_paths` keeps a path only when it reaches the root). Most
    nouns do; instance synsets (clay.n.03) do not, nor the few whose hypernyms are themselves
    instances (alabama.n.01's hypernym south.n.01 is an instance of geographical_area.n.01)."""

    def __init__(self, root_name: str = ROOT):
        self.root_name = root_name
        self._memo: dict[str, bool] = {}

    def reaches_root(self, syn) -> bool:
        name = syn.name()
        if name not in self._memo:
            self._memo[name] = name == self.root_name or any(self.reaches_root(h) for h in syn.hypernyms())
        return self._memo[name]


def _is_a_parents(syn, kind: str, paths: _HypernymPaths | None = None) -> list[tuple[object, str]]:
    """A synset's parents in T: hypernyms on a path to the root (reference), or every hypernym and
    instance hypernym (extended)."""
    if kind == EXTENDED:
        return [(h, "hypernym") for h in syn.hypernyms()] + [(h, "instance") for h in syn.instance_hypernyms()]
    return [(h, "hypernym") for h in syn.hypernyms() if paths is None or paths.reaches_root(h)]


def _senses(wn, word: str, kind: str, paths: _HypernymPaths) -> list:
    """A word's noun senses that belong in T: for `reference`, nltk's raw lookup, keeping the senses
    with a hypernym path to the root."""
    if kind == EXTENDED:
        return noun_synsets_for_word(wn, word)
    return [s for s in raw_noun_synsets(wn, word) if paths.reaches_root(s)]


def build_hierarchy(wn, vocab: Vocabulary, kind: str = DEFAULT_HIERARCHY) -> Hierarchy:
    """Build T for a vocabulary from an nltk WordNet reader, the `reference` or `extended` way."""
    check_hierarchy_kind(kind)
    root = wn.synset(ROOT)
    paths = _HypernymPaths()
    seeds: list = []
    missing: list[str] = []
    if vocab.is_all_nouns:
        seeds = list(wn.all_synsets("n"))
        if kind == REFERENCE:
            seeds = [s for s in seeds if paths.reaches_root(s)]
    else:
        for word in vocab.words:
            found = _senses(wn, word, kind, paths)
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
        stack.extend(p for p, _ in _is_a_parents(syn, kind, paths))
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
        for parent, link in _is_a_parents(members[n], kind, paths):
            edges.append((ids[parent.name()], ids[n], link))
    edges = sorted(set(edges))
    hierarchy = Hierarchy(
        synsets=synsets,
        edges=edges,
        word_sense_ids={ids[s.name()] for s in seeds},
        missing_words=missing,
        n_words=len(vocab.words),
        kind=kind,
    )
    _set_depths(hierarchy, ids[ROOT])
    unreachable = [s.name for s in synsets if s.depth < 0]
    if unreachable:
        log.warning("%d synsets do not reach %s: %s", len(unreachable), ROOT, unreachable[:5])
    log.info("hierarchy (%s): %d synsets, %d edges, %d words missing", kind, hierarchy.size, len(edges), len(missing))
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
