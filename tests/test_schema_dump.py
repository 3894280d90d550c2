"""schema/current.sql: the whole current schema in one file, equal to what the migrations build."""

from __future__ import annotations

import duckdb

from convis_db.store.migrations import CURRENT_SCHEMA_FILE, available_migrations, schema_dir
from convis_db.store.schema_dump import migrated_schema_sql


def catalog(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    """What a database holds, as DuckDB states it (one sorted list per kind of object)."""
    q = {
        "sequences": "SELECT sql FROM duckdb_sequences() WHERE schema_name = 'main'",
        "tables": "SELECT sql FROM duckdb_tables() WHERE NOT internal AND schema_name = 'main'",
        "views": "SELECT sql FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'",
        "macros": "SELECT function_name, function_type, parameters::VARCHAR, macro_definition FROM duckdb_functions() "
                  "WHERE NOT internal AND schema_name = 'main' AND function_type IN ('macro', 'table_macro')",
        "indexes": "SELECT sql FROM duckdb_indexes() WHERE schema_name = 'main'",
    }
    return {kind: sorted(con.execute(sql).fetchall(), key=repr) for kind, sql in q.items()}


def test_current_sql_is_what_the_migrations_build_now():
    written = (schema_dir() / CURRENT_SCHEMA_FILE).read_text(encoding="utf-8")
    assert written == migrated_schema_sql(), (
        "schema/current.sql is out of date: run `python -m convis_db.store.schema_dump > schema/current.sql`")


def test_current_sql_alone_builds_the_migrated_catalog(tmp_path):
    from convis_db.store.db import connect

    migrated = connect(tmp_path / "migrated.duckdb", write=True, create=True)
    fresh = duckdb.connect(str(tmp_path / "fresh.duckdb"))
    fresh.execute((schema_dir() / CURRENT_SCHEMA_FILE).read_text(encoding="utf-8"))
    want, got = catalog(migrated), catalog(fresh)
    assert want["tables"] and want["views"] and want["macros"]
    for kind in want:
        assert got[kind] == want[kind], kind


def test_current_sql_is_not_a_migration():
    assert CURRENT_SCHEMA_FILE not in [m.path.name for m in available_migrations()]
    assert (schema_dir() / CURRENT_SCHEMA_FILE).is_file()
