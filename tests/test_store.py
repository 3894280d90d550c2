"""The DuckDB store: migrations, refusing newer schemas, the SQL macros, and opening errors."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from convis_db.errors import DatabaseError, cli_wording
from convis_db.store.db import connect, require_initialised
from convis_db.store.hierarchy_store import find_synset_name, load_hierarchy, stored_vocabulary
from convis_db.store.migrations import applied_versions, available_migrations, migrate
from schema_history import apply_migrations_below

EXPECTED_TABLES = {"schema_migrations", "vocabulary", "synsets", "isa_edges", "closure", "models",
                   "definition_embeddings", "images", "windows", "image_scores", "window_concepts", "ingest_failures"}


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


# --------------------------------------------------------------------------- migrations


def test_shipped_migrations_are_numbered_from_one():
    # Increasing from 001 without duplicates; numbers are handed out ahead of merging, so a branch may
    # hold a gap (009 before 005-008 land).
    versions = [m.version for m in available_migrations()]
    assert versions[0] == 1 and versions == sorted(set(versions))
    assert len(versions) >= 2


def test_migrate_twice_is_a_noop(tmp_path):
    shipped = [m.version for m in available_migrations()]
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    try:
        assert migrate(con, "m") == shipped
        assert EXPECTED_TABLES <= _tables(con)
        assert migrate(con, "m") == []
        rows = con.execute(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version").fetchall()
        assert rows == [(v, 1) for v in shipped]
        checksums = dict(con.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        assert checksums == {m.version: m.checksum for m in available_migrations()}
    finally:
        con.close()


def test_a_changed_migration_text_is_reported(tmp_path, caplog):
    con = duckdb.connect(str(tmp_path / "c.duckdb"))
    try:
        migrate(con, "c")
        con.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 2")
        with caplog.at_level("WARNING", logger="convis_db.store.migrations"):
            assert migrate(con, "c") == []
        assert "schema migration 002 was applied from a different text" in caplog.text
    finally:
        con.close()


def test_connect_for_writing_twice_records_versions_once(tmp_path):
    path = tmp_path / "w.duckdb"
    for _ in range(2):
        con = connect(path, write=True, create=True)
        con.close()
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT version) FROM schema_migrations").fetchone() == (
            len(available_migrations()), len(available_migrations()))
    finally:
        con.close()


def test_partial_database_gets_only_the_missing_migrations(tmp_path):
    first, *rest = available_migrations()
    path = tmp_path / "partial.duckdb"
    con = duckdb.connect(str(path))
    apply_migrations_below(con, first.version + 1)
    assert migrate(con, str(path)) == [m.version for m in rest]
    assert set(applied_versions(con)) == {m.version for m in available_migrations()}
    con.close()


def _database_with_version(path: Path, version: int) -> None:
    con = connect(path, write=True, create=True)
    con.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (?, 'from_the_future', 'x')", [version])
    con.close()


@pytest.mark.parametrize("write", [False, True])
def test_newer_schema_is_refused(tmp_path, write):
    newest = max(m.version for m in available_migrations())
    path = tmp_path / "future.duckdb"
    _database_with_version(path, newest + 1)
    with pytest.raises(DatabaseError) as info:
        connect(path, write=write)
    message = str(info.value)
    assert "upgrade" in message.lower()
    assert str(newest + 1) in message


def test_newer_schema_is_refused_by_migrate(tmp_path):
    path = tmp_path / "future.duckdb"
    _database_with_version(path, 999)
    con = duckdb.connect(str(path))
    try:
        with pytest.raises(DatabaseError, match="(?i)upgrade"):
            migrate(con, str(path))
        # Nothing was recorded or changed by the refused attempt.
        assert max(applied_versions(con)) == 999
        assert con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(available_migrations()) + 1
    finally:
        con.close()


def test_read_only_open_does_not_migrate(tmp_path):
    path = tmp_path / "empty.duckdb"
    duckdb.connect(str(path)).close()
    con = connect(path)  # read-only: no schema is written
    try:
        assert "schema_migrations" not in _tables(con)
        with pytest.raises(DatabaseError, match=r"convis_db.create\(") as info:
            require_initialised(con, path)
        with cli_wording():
            assert "convis-db --db" in str(info.value) and " init " in str(info.value)
    finally:
        con.close()


# --------------------------------------------------------------------------- opening errors


def test_missing_database_names_init(tmp_path):
    path = tmp_path / "nope.duckdb"
    with pytest.raises(DatabaseError) as info:
        connect(path)
    assert "convis_db.create(" in str(info.value)  # a Python caller's words; the CLI's name init
    with cli_wording():
        assert "init" in str(info.value)
    assert str(path) in str(info.value)
    assert not path.exists()  # a failed open does not leave an empty file behind


def test_not_a_duckdb_file(tmp_path):
    path = tmp_path / "text.duckdb"
    path.write_text("this is not a database\n" * 100)
    with pytest.raises(DatabaseError, match="DuckDB"):
        connect(path)


def test_create_makes_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "new.duckdb"
    con = connect(path, write=True, create=True)
    try:
        assert EXPECTED_TABLES <= _tables(con)
    finally:
        con.close()
    assert path.is_file()


# --------------------------------------------------------------------------- macros versus the closure table


@pytest.fixture(scope="module")
def ro(tiny_db):
    con = connect(tiny_db)
    yield con
    con.close()


def _names(con, sql: str, params=()) -> set[str]:
    return {r[0] for r in con.execute(sql, list(params)).fetchall()}


def test_descendants_macro(ro):
    got = {(r[0], r[1]) for r in ro.execute("SELECT name, distance FROM descendants('animal.n.01')").fetchall()}
    expected = {(r[0], r[1]) for r in ro.execute(
        "SELECT d.name, c.distance FROM closure c JOIN synsets a ON a.synset_id = c.ancestor_id "
        "JOIN synsets d ON d.synset_id = c.descendant_id WHERE a.name = 'animal.n.01'").fetchall()}
    assert got == expected
    names = {n for n, _ in got}
    assert {"animal.n.01", "dog.n.01", "cat.n.01", "big_cat.n.01"} <= names
    assert "car.n.01" not in names and "apple.n.01" not in names
    assert ("animal.n.01", 0) in got and ("dog.n.01", 2) in got


def test_ancestors_macro(ro):
    got = {(r[0], r[1]) for r in ro.execute("SELECT name, distance FROM ancestors('dog.n.01')").fetchall()}
    expected = {(r[0], r[1]) for r in ro.execute(
        "SELECT a.name, c.distance FROM closure c JOIN synsets a ON a.synset_id = c.ancestor_id "
        "JOIN synsets d ON d.synset_id = c.descendant_id WHERE d.name = 'dog.n.01'").fetchall()}
    assert got == expected
    assert ("dog.n.01", 0) in got
    assert ("entity.n.01", 8) in got  # dog.n.01's min_depth in WordNet 3.0
    names = {n for n, _ in got}
    assert {"canine.n.02", "domestic_animal.n.01", "carnivore.n.01", "mammal.n.01", "animal.n.01"} <= names


def test_children_macro(ro, wn):
    got = {(r[0], r[1]) for r in ro.execute("SELECT name, kind FROM children('feline.n.01')").fetchall()}
    members = _names(ro, "SELECT name FROM synsets")
    expected = {(h.name(), "hypernym") for h in wn.synset("feline.n.01").hyponyms() if h.name() in members}
    assert got == expected
    assert {n for n, _ in got} == {"cat.n.01", "big_cat.n.01"}
    # Consistent with distance-1 rows of the closure.
    closure_children = _names(ro, "SELECT name FROM descendants('feline.n.01') WHERE distance = 1")
    assert closure_children == {n for n, _ in got}


def test_parents_macro_keeps_both_parents(ro):
    assert _names(ro, "SELECT name FROM parents('dog.n.01')") == {"canine.n.02", "domestic_animal.n.01"}
    assert _names(ro, "SELECT name FROM parents('apple.n.01')") == {"edible_fruit.n.01", "pome.n.01"}
    assert _names(ro, "SELECT name FROM parents('entity.n.01')") == set()
    assert _names(ro, "SELECT name FROM ancestors('dog.n.01') WHERE distance = 1") == {"canine.n.02",
                                                                                       "domestic_animal.n.01"}


def test_macros_return_nothing_for_unknown_concepts(ro):
    for macro in ("descendants", "ancestors", "children", "parents"):
        assert ro.execute(f"SELECT count(*) FROM {macro}('no_such.n.01')").fetchone()[0] == 0


def test_macros_on_every_synset_match_closure_counts(ro):
    """descendants(x) has as many rows as closure pairs with ancestor x, for every x."""
    rows = ro.execute(
        "SELECT s.name, (SELECT count(*) FROM closure c WHERE c.ancestor_id = s.synset_id) FROM synsets s").fetchall()
    for name, n in rows[:: max(1, len(rows) // 25)]:
        assert ro.execute("SELECT count(*) FROM descendants(?)", [name]).fetchone()[0] == n, name


# --------------------------------------------------------------------------- reading T back


def test_stored_vocabulary(ro, small_vocab_words):
    vocab = stored_vocabulary(ro)
    assert vocab["name"] == "small_words"
    assert vocab["n_words"] == len(small_vocab_words)
    assert vocab["n_synsets"] == ro.execute("SELECT count(*) FROM synsets").fetchone()[0]


def test_load_hierarchy_and_resolve(ro):
    h = load_hierarchy(ro)
    assert h.size == ro.execute("SELECT count(*) FROM synsets").fetchone()[0]
    assert len(h.parent) == ro.execute("SELECT count(*) FROM isa_edges").fetchone()[0]
    assert h.names[h.resolve("dog.n.01")] == "dog.n.01"
    from convis_db.errors import NotFoundError

    with pytest.raises(NotFoundError, match="dog.n.01"):
        h.resolve("dog.n.1")
    # Propagation levels: every edge appears once, children before parents.
    n_edges = sum(len(p) for p, _ in h.propagation_levels)
    assert n_edges == len(h.parent)


def test_find_synset_name(ro):
    from convis_db.errors import NotFoundError, UsageError

    assert find_synset_name(ro, "dog.n.01") == ro.execute(
        "SELECT synset_id FROM synsets WHERE name = 'dog.n.01'").fetchone()[0]
    with pytest.raises(UsageError, match="dog.n.01"):
        find_synset_name(ro, "dog")  # a word, not a synset: the senses are listed
    with pytest.raises(NotFoundError, match="init --vocab"):
        find_synset_name(ro, "zebra.n.01")  # a real synset outside this T
