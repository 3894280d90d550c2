"""The hierarchy T stored by init, checked against direct walks of nltk's WordNet written here.

`--hierarchy extended`: every noun sense of every (normalised) vocabulary word, plus every synset on
any of its is-a paths (hypernyms and instance hypernyms) up to entity.n.01; all parents kept (a DAG).
The shared fixtures tiny_db and physical_db hold this T.

`--hierarchy reference` (the default): the authors' T: raw `wn.synsets(word, pos="n")` senses and the
synsets on their hypernym-only paths to entity.n.01 (7,080 for physical-objects).
"""

from __future__ import annotations

import itertools
import unicodedata
from pathlib import Path

import duckdb
import pytest

from convis_db.wordnet.hierarchy import EXTENDED, REFERENCE, build_hierarchy
from convis_db.wordnet.vocab import (
    PHYSICAL_OBJECTS,
    Vocabulary,
    load_vocabulary,
    noun_synsets_for_word,
    read_word_file,
    word_variants,
)
from schema_history import apply_migrations_below

ROOT = "entity.n.01"


# --------------------------------------------------------------------------- the reference walk


def _fold(text: str) -> str:
    """Lower case, accents dropped, spaces/underscores/hyphens removed, trailing s dropped."""
    text = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    for ch in " _-":
        text = text.replace(ch, "")
    return text.rstrip("s")


def direct_senses(wn, word: str) -> tuple[list, bool]:
    """Noun senses of a word by plain lookups; (senses, True) when convis_db's fuzzier rules were needed.

    The fallback's answers are checked by the caller to be real spellings of the word.
    """
    lower = word.strip().lower()
    for key in (lower, lower.replace(" ", "_"), lower.replace(" ", "_").replace("-", "_")):
        found = wn.synsets(key, pos="n")
        if found:
            return found, False
    return noun_synsets_for_word(wn, word), True


class Reference:
    """T computed straight from nltk: seeds, members via hypernym_paths(), edges, closure, depths."""

    def __init__(self, wn, words: list[str]):
        self.seeds: set[str] = set()
        self.missing: list[str] = []
        self.fallback: dict[str, list[str]] = {}
        for word in words:
            senses, used_fallback = direct_senses(wn, word)
            if not senses:
                self.missing.append(word)
                continue
            if used_fallback:
                self.fallback[word] = [s.name() for s in senses]
                # Whatever spelling rule found them, each sense must have a lemma that is this word.
                for s in senses:
                    assert any(_fold(lemma) == _fold(word) for lemma in s.lemma_names()), (word, s.name())
            self.seeds.update(s.name() for s in senses)
        # closure[descendant][ancestor] = shortest distance along any hypernym path.
        self.closure: dict[str, dict[str, int]] = {}
        members: dict[str, object] = {}
        for name in self.seeds:
            for path in wn.synset(name).hypernym_paths():  # root first, the synset last
                assert path[0].name() == ROOT
                for i, node in enumerate(path):
                    members[node.name()] = node
                    # Every suffix of a path is also a path from that node up to the root.
                    below = self.closure.setdefault(node.name(), {})
                    for j in range(i + 1):
                        anc = path[j].name()
                        d = i - j
                        if below.get(anc, d + 1) > d:
                            below[anc] = d
        self.members = members
        self.edges: set[tuple[str, str, str]] = set()
        for name, syn in members.items():
            for h in syn.hypernyms():
                self.edges.add((h.name(), name, "hypernym"))
            for h in syn.instance_hypernyms():
                self.edges.add((h.name(), name, "instance"))

    def closure_triples(self) -> set[tuple[str, str, int]]:
        return {(a, d, dist) for d, ancs in self.closure.items() for a, dist in ancs.items()}


def _db_tables(path: Path) -> dict:
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = {r[0]: r[1] for r in con.execute("SELECT synset_id, name FROM synsets").fetchall()}
        out = {
            "synsets": {r[0]: r[1:] for r in con.execute(
                "SELECT name, wn_offset, lemmas, definition, depth, lexname, is_word_sense FROM synsets").fetchall()},
            "edges": {(names[p], names[c], k) for p, c, k in con.execute(
                "SELECT parent_id, child_id, kind FROM isa_edges").fetchall()},
            "closure": {(names[a], names[d], dist) for a, d, dist in con.execute(
                "SELECT ancestor_id, descendant_id, distance FROM closure").fetchall()},
            "vocabulary": con.execute(
                "SELECT name, n_words, missing_words, n_synsets, wordnet_version FROM vocabulary").fetchall(),
            "ids": sorted(names),
            "names_by_id": [names[i] for i in sorted(names)],
        }
    finally:
        con.close()
    return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small_ref(wn, small_vocab_words):
    return Reference(wn, small_vocab_words)


@pytest.fixture(scope="module")
def small_tables(tiny_db):
    return _db_tables(tiny_db)


@pytest.fixture(scope="module")
def physical_words():
    return load_vocabulary(PHYSICAL_OBJECTS).words


@pytest.fixture(scope="module")
def physical_ref(wn, physical_words):
    return Reference(wn, physical_words)


@pytest.fixture(scope="module")
def physical_tables(physical_db):
    return _db_tables(physical_db)


@pytest.fixture(params=["small", "physical"])
def case(request):
    """(reference walk, stored tables, vocabulary words) for the small vocabulary and physical-objects."""
    if request.param == "small":
        return (request.getfixturevalue("small_ref"), request.getfixturevalue("small_tables"),
                request.getfixturevalue("small_vocab_words"))
    return (request.getfixturevalue("physical_ref"), request.getfixturevalue("physical_tables"),
            request.getfixturevalue("physical_words"))


# --------------------------------------------------------------------------- T versus the reference


def test_small_vocabulary_needs_no_fuzzy_spelling(small_ref):
    assert small_ref.fallback == {}
    assert small_ref.missing == []


def test_synset_set_matches_union_of_hypernym_paths(case):
    ref, tables, _ = case
    assert set(tables["synsets"]) == set(ref.members)
    assert len(tables["synsets"]) == len(ref.members)


def test_edge_set_matches_every_is_a_pair(case):
    ref, tables, _ = case
    # Every parent of a member is itself a member (T is closed upwards).
    assert all(p in ref.members for p, _, _ in ref.edges)
    assert tables["edges"] == ref.edges
    assert len(tables["edges"]) == len(ref.edges)


def test_vocabulary_row_counts(case):
    ref, tables, words = case
    (row,) = tables["vocabulary"]
    _, n_words, missing, n_synsets, version = row
    assert n_words == len(words)
    assert n_synsets == len(ref.members) == len(tables["synsets"])
    assert sorted(missing) == sorted(ref.missing)
    assert version == "3.0"


def test_word_senses_flagged(case):
    ref, tables, _ = case
    flagged = {name for name, row in tables["synsets"].items() if row[-1]}
    assert flagged == ref.seeds


def test_closure_is_shortest_hypernym_path_distance(case):
    ref, tables, _ = case
    expected = ref.closure_triples()
    assert len(tables["closure"]) == len(expected)
    assert tables["closure"] == expected


def test_synset_attributes_match_wordnet(case, wn):
    _, tables, _ = case
    for name, (offset, lemmas, definition, depth, lexname, _) in tables["synsets"].items():
        syn = wn.synset(name)
        assert offset == syn.offset(), name
        assert list(lemmas) == syn.lemma_names(), name
        assert definition == syn.definition(), name
        assert depth == syn.min_depth(), name
        assert lexname == syn.lexname(), name


def test_ids_are_dense_and_in_name_order(case):
    _, tables, _ = case
    n = len(tables["ids"])
    assert tables["ids"] == list(range(n))
    assert tables["names_by_id"] == sorted(tables["names_by_id"])


# --------------------------------------------------------------------------- closure properties


def test_known_closure_pairs(small_tables):
    closure = {(a, d): dist for a, d, dist in small_tables["closure"]}
    # dog.n.01 -> domestic_animal.n.01 -> animal.n.01 is shorter than the route through canine/mammal.
    assert closure[("animal.n.01", "dog.n.01")] == 2
    assert closure[("canine.n.02", "dog.n.01")] == 1
    assert closure[("carnivore.n.01", "dog.n.01")] == 2
    assert closure[("mammal.n.01", "dog.n.01")] == 4
    assert closure[("feline.n.01", "cat.n.01")] == 1
    assert closure[("big_cat.n.01", "tiger.n.02")] == 1
    assert closure[("motor_vehicle.n.01", "car.n.01")] == 1
    assert ("animal.n.01", "car.n.01") not in closure
    assert ("dog.n.01", "animal.n.01") not in closure  # direction matters


def test_every_synset_is_its_own_descendant_at_distance_zero(case):
    _, tables, _ = case
    zero = {(a, d) for a, d, dist in tables["closure"] if dist == 0}
    assert zero == {(n, n) for n in tables["synsets"]}


def test_every_synset_descends_from_entity(case):
    _, tables, _ = case
    under_root = {d for a, d, _ in tables["closure"] if a == ROOT}
    assert under_root == set(tables["synsets"])
    assert tables["synsets"][ROOT][3] == 0  # depth of the root
    assert not any(c == ROOT for _, c, _ in tables["edges"])  # the root has no parent


def test_closure_is_acyclic(case):
    _, tables, _ = case
    pairs = {(a, d) for a, d, dist in tables["closure"] if dist > 0}
    assert not any((d, a) in pairs for a, d in pairs)


# --------------------------------------------------------------------------- the DAG keeps every parent


def test_multi_parent_synsets_keep_every_edge(physical_ref, physical_tables):
    multi = {name: syn for name, syn in physical_ref.members.items()
             if len(syn.hypernyms()) + len(syn.instance_hypernyms()) >= 2}
    assert len(multi) > 100  # WordNet has many; physical-objects T holds a few hundred
    for name, syn in multi.items():
        for h in syn.hypernyms():
            assert (h.name(), name, "hypernym") in physical_tables["edges"], name
        for h in syn.instance_hypernyms():
            assert (h.name(), name, "instance") in physical_tables["edges"], name


def test_apple_has_both_parents(physical_tables, small_tables):
    for tables in (physical_tables, small_tables):
        parents = {p for p, c, _ in tables["edges"] if c == "apple.n.01"}
        assert parents == {"edible_fruit.n.01", "pome.n.01"}


def test_instance_edges_are_marked(physical_ref, physical_tables):
    instances = {e for e in physical_tables["edges"] if e[2] == "instance"}
    assert instances == {e for e in physical_ref.edges if e[2] == "instance"}


# --------------------------------------------------------------------------- size of the default T


def test_physical_objects_size(physical_tables, physical_words):
    (row,) = physical_tables["vocabulary"]
    name, n_words, missing, n_synsets, _ = row
    assert name == PHYSICAL_OBJECTS
    assert n_words == len(physical_words) == 1980
    assert 7000 <= n_synsets <= 7600
    assert len(missing) < 53
    assert set(missing) <= set(physical_words)


# --------------------------------------------------------------------------- word normalisation


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("Hot Dog", "frank.n.02"),
        ("hot dog", "frank.n.02"),
        ("t-shirt", "jersey.n.03"),
        ("T-Shirt", "jersey.n.03"),
        ("jalapeño", "jalapeno.n.02"),
        ("Ice Cream", "ice_cream.n.01"),
        ("barber chair", "barber_chair.n.01"),
        ("airbag", "air_bag.n.01"),      # closed-up compound split into WordNet's open spelling
        ("cuff-link", "cufflink.n.01"),  # hyphen closed up
        ("Dogs", "dog.n.01"),            # plural through morphy
    ],
)
def test_word_normalisation(wn, word, expected):
    names = {s.name() for s in noun_synsets_for_word(wn, word)}
    assert expected in names


def test_unknown_word_has_no_senses(wn):
    assert noun_synsets_for_word(wn, "qwzxv") == []


def test_word_variants_order_and_uniqueness():
    variants = word_variants("Hot Dog")
    assert variants[0] == "Hot Dog"
    assert "hot_dog" in variants
    assert len(variants) == len(set(variants))
    assert "jalapeno" in word_variants("jalapeño")


def test_small_db_resolves_spaced_and_hyphenated_words(small_tables):
    (row,) = small_tables["vocabulary"]
    assert list(row[2]) == []  # no missing words
    flagged = {name for name, r in small_tables["synsets"].items() if r[-1]}
    assert {"frank.n.02", "jersey.n.03", "dog.n.01", "pizza.n.01", "bicycle.n.01"} <= flagged


@pytest.mark.parametrize("kind", [EXTENDED, REFERENCE])
def test_missing_words_are_reported(wn, kind):
    vocab = Vocabulary("t", "test", ["dog", "qwzxv", "t-shirt", "blorptastic"])
    h = build_hierarchy(wn, vocab, kind)
    assert h.missing_words == ["qwzxv", "blorptastic"]
    assert h.n_words == 4
    assert "dog.n.01" in h.by_name and "jersey.n.03" in h.by_name


def test_read_word_file_skips_comments_and_duplicates(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("# header\ndog\n\ncat  # a pet\ndog\n  hot dog \n", encoding="utf-8")
    assert read_word_file(path) == ["dog", "cat", "hot dog"]


# --------------------------------------------------------------------------- the authors' T (reference)


class AuthorsWalk:
    """The authors' T written from their description: the raw noun senses of each word, every path
    that climbs hypernym links (never instance hypernyms) to entity.n.01, and the synsets and
    consecutive pairs on those paths."""

    def __init__(self, wn, words: list[str]):
        self.root = wn.synset(ROOT)
        self._paths: dict[str, list[list]] = {}
        self.members: set[str] = set()
        self.edges: set[tuple[str, str]] = set()
        self.seeds: set[str] = set()
        self.missing = [w for w in words if not wn.synsets(w, pos="n")]
        for word in words:
            for sense in wn.synsets(word, pos="n"):
                paths = self.paths(sense)
                if paths:
                    self.seeds.add(sense.name())
                for path in paths:            # the sense first, the root last
                    self.members.update(s.name() for s in path)
                    self.edges.update((up.name(), down.name()) for down, up in itertools.pairwise(path))

    def paths(self, syn) -> list[list]:
        if syn.name() not in self._paths:
            if syn == self.root:
                found = [[syn]]
            else:
                found = [[syn, *rest] for h in syn.hypernyms() for rest in self.paths(h)]
            self._paths[syn.name()] = found
        return self._paths[syn.name()]


@pytest.fixture(scope="module")
def physical_reference(wn, physical_words):
    return build_hierarchy(wn, load_vocabulary(PHYSICAL_OBJECTS), REFERENCE)


def test_reference_physical_objects_is_the_authors_7080(wn, physical_words, physical_reference):
    h = physical_reference
    walk = AuthorsWalk(wn, physical_words)
    assert h.size == len(walk.members) == 7080        # the authors' dict_size
    assert set(h.by_name) == walk.members
    names = [s.name for s in h.synsets]
    assert {(names[p], names[c]) for p, c, _ in h.edges} == walk.edges
    assert {kind for _, _, kind in h.edges} == {"hypernym"}
    assert {names[i] for i in h.word_sense_ids} == walk.seeds
    assert h.missing_words == walk.missing and len(h.missing_words) == 53
    assert h.kind == REFERENCE


@pytest.mark.parametrize("name, present", [
    ("entity.n.01", True), ("dog.n.01", True), ("frank.n.02", True),   # 'dog' raw senses include the sausage
    ("jersey.n.03", True), ("ice_cream.n.01", True), ("person.n.01", True), ("city.n.01", True),
    ("star.n.01", True),
    ("clay.n.03", False),        # a United States general: an instance, reached only through instance links
    ("general.n.01", False),     # ... so its class is not in T either
    ("sun.n.01", False), ("turkey.n.02", False), ("big_dipper.n.01", False),   # instances
    ("air_bag.n.01", False),     # 'airbag' needs the extended T's compound splitting
])
def test_reference_spot_list(physical_reference, name, present):
    assert (name in physical_reference.by_name) is present


def test_reference_is_a_subset_of_extended(wn, physical_reference):
    extended = build_hierarchy(wn, load_vocabulary(PHYSICAL_OBJECTS), EXTENDED)
    assert extended.size == 7343 and set(physical_reference.by_name) < set(extended.by_name)
    assert "clay.n.03" in extended.by_name


def test_reference_small_vocabulary_matches_the_walk(wn, small_vocab_words):
    h = build_hierarchy(wn, Vocabulary("s", "test", small_vocab_words), REFERENCE)
    walk = AuthorsWalk(wn, small_vocab_words)
    assert set(h.by_name) == walk.members and h.missing_words == walk.missing == ["hot dog"]
    assert "tree.n.03" not in h.by_name        # Sir Herbert Beerbohm Tree, an instance of actor


def test_init_default_is_reference_and_recorded(run_cli, tmp_path, tiny_config, small_vocab_file):
    import json

    db = tmp_path / "ref.duckdb"
    result = run_cli("-q", "--db", db, "init", "--model", tiny_config, "--pretrained", "none", "--vocab",
                     small_vocab_file, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["hierarchy"] == REFERENCE and report["missing_words"] == ["hot dog"]
    tables = _db_tables(db)
    assert not any(kind == "instance" for _, _, kind in tables["edges"])
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT hierarchy FROM vocabulary").fetchone()[0] == REFERENCE
    finally:
        con.close()
    # One database, one T: asking for the other one is refused; omitting --hierarchy reuses it.
    other = run_cli("--db", db, "init", "--model", tiny_config, "--pretrained", "none", "--vocab", small_vocab_file,
                    "--device", "cpu", "--hierarchy", EXTENDED)
    assert other.exit_code == 2 and "--hierarchy reference" in other.stderr
    again = run_cli("-q", "--db", db, "init", "--model", tiny_config, "--pretrained", "none", "--vocab",
                    small_vocab_file, "--device", "cpu", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["hierarchy"] == REFERENCE
    # An instance synset is in WordNet but never in the reference T: the error says how to get it.
    clay = run_cli("--db", db, "search", "clay.n.03")
    assert clay.exit_code == 2 and "--hierarchy extended" in clay.stderr, clay.stderr


def test_database_from_before_schema_006_reads_as_extended(tmp_path, small_vocab_file):
    """A database made with migrations 001..005 only (no hierarchy column) opens read-only and reads as
    'extended', upgrades on a write open, and init on it keeps working."""
    from convis_db.errors import DatabaseError
    from convis_db.init_db import initialise
    from convis_db.models.registry import resolve_model
    from convis_db.store.db import connect
    from convis_db.store.hierarchy_store import stored_vocabulary
    from convis_db.store.migrations import applied_versions

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    apply_migrations_below(con, 6)
    vocab = load_vocabulary(str(small_vocab_file))
    # The vocabulary row as versions before 006 wrote it: no hierarchy column.
    con.execute("INSERT INTO vocabulary (vocab_id, name, source, words_sha256, n_words, missing_words, n_synsets, "
                "wordnet_version, created_at) VALUES (1, ?, ?, ?, ?, ?, ?, '3.0', current_timestamp)",
                [vocab.name, vocab.source, vocab.fingerprint, len(vocab.words), [], 1])
    con.execute("INSERT INTO synsets VALUES (0, 'entity.n.01', 1740, ['entity'], 'that which exists', 0, "
                "'noun.Tops', false)")
    con.close()

    ro = connect(path)
    try:
        assert stored_vocabulary(ro)["hierarchy"] == EXTENDED
    finally:
        ro.close()
    rw = connect(path, write=True)
    try:
        assert 6 in applied_versions(rw)
        assert rw.execute("SELECT hierarchy FROM vocabulary").fetchone()[0] == EXTENDED
        assert stored_vocabulary(rw)["name"] == vocab.name
    finally:
        rw.close()
    from convis_db.query.stats import database_stats
    from convis_db.store.hierarchy_store import find_synset_name

    ro = connect(path)      # and it still answers
    try:
        assert database_stats(ro, str(path))["hierarchy"] == EXTENDED
        assert find_synset_name(ro, "entity.n.01") == 0
    finally:
        ro.close()
    spec = resolve_model(str(Path(__file__).parent / "data" / "tiny-clip.json"), "none")
    with pytest.raises(DatabaseError, match="--hierarchy extended"):
        initialise(path, str(small_vocab_file), spec, torch_cpu(), hierarchy=REFERENCE)


def torch_cpu():
    import torch

    return torch.device("cpu")


def test_reference_drops_senses_whose_hypernyms_are_instances(wn):
    # alabama.n.01 has a hypernym (south.n.01), but that is an instance: no hypernym path to the root.
    h = build_hierarchy(wn, Vocabulary("t", "test", ["alabama", "dog"]), REFERENCE)
    assert "alabama.n.01" not in h.by_name and "south.n.01" not in h.by_name
    assert h.missing_words == [] and "dog.n.01" in h.by_name
    # The people and the language have hypernym paths; the state and the river (an instance) do not.
    assert {s.name() for s in wn.synsets("alabama", "n") if s.name() in h.by_name} == {"alabama.n.02", "alabama.n.04"}
    assert all(s.depth >= 0 for s in h.synsets)
