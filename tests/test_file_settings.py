"""The file-wide choices convis-db makes (issue 24): new files get 128 KiB blocks, and every writable
connection writes row groups of ROW_GROUP_SIZE rows; a file with DuckDB's 256 KiB blocks (every file
made before) keeps them and still opens, upgrades, answers and takes merges.

Each check reads what DuckDB reports of the file, so dropping either setting from store/db.py fails here.
"""

from __future__ import annotations

import shutil

import duckdb
import pytest
from schema_history import copy_into_schema_below
from test_compact_concepts import _everything
from test_concept_peaks import _upgraded_answers, captured  # noqa: F401 (a fixture)
from test_merge_faults import written  # noqa: F401 (a fixture)

import convis_db
from convis_db.store import db as store_db
from convis_db.store.db import connect, cursor
from convis_db.store.migrations import applied_versions, available_migrations

#: DuckDB's own block size: what every file convis-db created before issue 24 has.
DUCKDB_BLOCK = 262_144


def block_size(path) -> int:
    con = duckdb.connect(str(path), read_only=True)  # plain DuckDB: what any reader finds in the file
    try:
        return con.execute("SELECT block_size FROM pragma_database_size() WHERE database_name = current_database()"
                           ).fetchone()[0]
    finally:
        con.close()


def row_groups(con, table: str) -> int:
    return con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info(?)", [table]).fetchone()[0]


def test_the_shipped_settings_are_not_duckdbs_defaults():
    assert store_db.BLOCK_SIZE == 131_072
    assert store_db.ROW_GROUP_SIZE == 1_048_576


def test_a_file_init_creates_has_128_kib_blocks(tiny_db):
    assert block_size(tiny_db) == store_db.BLOCK_SIZE != DUCKDB_BLOCK


def test_a_writable_connection_writes_row_groups_of_the_chosen_size(tiny_db_copy):
    rows = 300_000  # above DuckDB's 122,880, under ROW_GROUP_SIZE: one group with the setting, three without
    con = connect(tiny_db_copy, write=True)
    try:
        options = con.execute("SELECT options FROM duckdb_databases() WHERE database_name = current_database()"
                              ).fetchone()[0]
        assert options["row_group_size"] == str(store_db.ROW_GROUP_SIZE)
        con.execute("CREATE TABLE scratch AS SELECT range AS i FROM range(?)", [rows])
        writer = cursor(con)  # the ingest's writer thread's connection writes the same way
        writer.execute("CREATE TABLE scratch2 AS SELECT range AS i FROM range(?)", [rows])
        writer.close()
        con.execute("CHECKPOINT")
        assert row_groups(con, "scratch") == row_groups(con, "scratch2") == 1
    finally:
        con.close()
    con = connect(tiny_db_copy)  # read back: the rows are in the file, not in the in-memory catalog
    try:
        assert con.execute("SELECT count(*), sum(i) FROM scratch2").fetchone() == (rows, rows * (rows - 1) // 2)
    finally:
        con.close()


def test_a_file_with_256_kib_blocks_from_before_013_opens_upgrades_and_answers_the_same(captured, tmp_path):  # noqa: F811
    db, _ = captured
    old = tmp_path / "old.duckdb"
    copy_into_schema_below(db, old, 13)  # made by plain DuckDB, as an earlier convis-db made its files
    assert block_size(old) == DUCKDB_BLOCK
    current = _upgraded_answers(db)
    con = connect(old)  # the read-only open upgrades it, through a writable connection of ours
    assert 13 in applied_versions(con)
    con.close()
    assert block_size(old) == DUCKDB_BLOCK  # a file keeps its blocks
    assert _upgraded_answers(old) == current


def _merged_answers(db, shards) -> dict:
    with convis_db.open(db, write=True, device="cpu") as api:
        assert [m.status for m in api.merge(shards)] == ["merged"]
    return _everything(db)


def test_merge_into_a_new_file_and_into_files_of_older_blocks_stores_the_same(written, tiny_db, tmp_path):  # noqa: F811
    new = tmp_path / "new.duckdb"
    shutil.copyfile(tiny_db, new)  # a file init made: 128 KiB blocks
    old = tmp_path / "old.duckdb"  # the same rows at the current schema in a file of DuckDB's blocks
    copy_into_schema_below(tiny_db, old, max(m.version for m in available_migrations()) + 1)
    made_64 = tmp_path / "made_64.duckdb"  # and in one of 64 KiB blocks, as convis-db made them before 020
    duckdb.connect(str(made_64), config={"default_block_size": 65_536}).close()
    copy_into_schema_below(tiny_db, made_64, max(m.version for m in available_migrations()) + 1)
    sizes = (store_db.BLOCK_SIZE, DUCKDB_BLOCK, 65_536)
    assert (block_size(new), block_size(old), block_size(made_64)) == sizes
    answers = {}
    for path in (new, old, made_64):
        shards = shutil.copytree(written, tmp_path / f"shards-{path.stem}")
        answers[path] = _merged_answers(path, shards)
    assert answers[new]["search image False"]
    assert answers[new] == answers[old] == answers[made_64]
    assert (block_size(new), block_size(old), block_size(made_64)) == sizes  # each file keeps its blocks


def test_a_second_writable_open_in_this_process_names_the_open_one(tiny_db_copy):
    from convis_db.errors import DatabaseLockedError

    con = connect(tiny_db_copy, write=True)
    try:
        with pytest.raises(DatabaseLockedError, match="already open in this process"):
            connect(tiny_db_copy, write=True)
    finally:
        con.close()


def test_a_writable_connection_spills_beside_its_file_not_in_the_working_directory(tiny_db_copy, tmp_path,
                                                                                     monkeypatch):
    """The file is attached to an in-memory DuckDB, whose own default would be `.tmp` in the working
    directory: a large sort or join would leave files wherever the user ran the command."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    con = connect(tiny_db_copy, write=True)
    try:
        spill = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    finally:
        con.close()
    assert spill == f"{tiny_db_copy}.tmp"
    assert not any(elsewhere.iterdir())
