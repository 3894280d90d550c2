"""The whole current schema in one readable file, `schema/current.sql`, written from what the
migrations build.

Databases are made and upgraded by the numbered migrations (store/migrations.py): each keeps the
step from the schema before it, so the current shape of a table, view or macro is spread over
several files. `current.sql` puts the result in one place for people reading it: every sequence,
table, macro, view and index of a freshly migrated database, as DuckDB itself states them (tables,
views, sequences, indexes) or as the last migration that defined them wrote them (macros: DuckDB's
catalog does not keep their parameters' defaults). The test suite checks that the file equals what
the migrations build now, and that running the file alone builds the same catalog.

    python -m convis_db.store.schema_dump > schema/current.sql
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import duckdb

from convis_db.store.migrations import available_migrations

HEADER = """-- The whole current schema of a convis-db database, in one file, for reading.
-- Written by `python -m convis_db.store.schema_dump > schema/current.sql` from a database the numbered
-- migrations beside this file have just built (tests/test_schema_dump.py checks that it is current).
-- Databases are made and upgraded by those migrations, never from this file: it holds no rows (the
-- migrations also insert a few, e.g. concept_index_state's first one).
"""


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def macro_statements(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """name -> the CREATE MACRO statement of the last migration that defines each macro the database holds."""
    names = [r[0] for r in _rows(con, "SELECT DISTINCT function_name FROM duckdb_functions() WHERE NOT internal "
                                      "AND schema_name = 'main' AND function_type IN ('macro', 'table_macro') "
                                      "ORDER BY function_name")]
    found: dict[str, str] = {}
    for migration in available_migrations():
        for name in names:
            for match in re.finditer(rf"CREATE (?:OR REPLACE )?(?:TEMP )?MACRO {re.escape(name)}\s*\(.*?;[ \t]*(?:\n|$)",
                                     migration.sql, re.S):
                found[name] = match.group(0).strip()
    missing = sorted(set(names) - set(found))
    if missing:
        raise RuntimeError(f"no migration defines the macros {missing}")
    return found


def _runnable_order(statements: dict[str, str], scratch: duckdb.DuckDBPyConnection) -> list[str]:
    """The names in an order that creates each after what it refers to (a table's foreign keys, the
    tables and views a view reads: DuckDB checks them when the object is made), found by creating
    them in `scratch`, name order first, deferring what cannot be made yet."""
    order: list[str] = []
    pending = sorted(statements)
    while pending:
        made = []
        for name in pending:
            try:
                scratch.execute(statements[name])
            except duckdb.Error:
                continue
            made.append(name)
        if not made:
            raise RuntimeError(f"{pending} cannot be created in any order")
        order += made
        pending = [n for n in pending if n not in made]
    return order


def _one_column_a_line(create_table: str) -> str:
    """DuckDB's one-line CREATE TABLE with each column and constraint on a line of its own."""
    start, end = create_table.index("("), create_table.rindex(")")
    parts, depth, last = [], 0, start + 1
    for i in range(start + 1, end):
        ch = create_table[i]
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(create_table[last:i].strip())
            last = i + 1
    parts.append(create_table[last:end].strip())
    return create_table[:start] + " (\n    " + ",\n    ".join(parts) + "\n)" + create_table[end + 1:]


def current_schema_sql(con: duckdb.DuckDBPyConnection) -> str:
    """The CREATE statements of everything in the database's main schema, in an order that runs."""
    sequences = [r[0] for r in _rows(con, "SELECT sql FROM duckdb_sequences() WHERE schema_name = 'main' "
                                          "ORDER BY sequence_name")]
    tables = {r[0]: r[1] for r in _rows(con, "SELECT table_name, sql FROM duckdb_tables() WHERE NOT internal AND "
                                             "schema_name = 'main'")}
    macros = macro_statements(con)
    views = {r[0]: r[1] for r in _rows(con, "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND "
                                            "schema_name = 'main'")}
    indexes = [r[0] for r in _rows(con, "SELECT sql FROM duckdb_indexes() WHERE schema_name = 'main' AND sql IS NOT NULL "
                                        "ORDER BY index_name")]
    readers = {**{f"macro {n}": macros[n] for n in macros}, **{f"view {n}": v for n, v in views.items()}}
    scratch = duckdb.connect()
    try:
        for statement in sequences:
            scratch.execute(statement)
        table_order = _runnable_order(tables, scratch)
        reader_order = _runnable_order(readers, scratch)  # macros and views read each other
    finally:
        scratch.close()
    sections = [("Sequences", sequences), ("Tables", [_one_column_a_line(tables[n]) for n in table_order]),
                ("Macros and views, each after what it reads", [readers[n] for n in reader_order]),
                ("Indexes", indexes)]
    out = [HEADER]
    for title, statements in sections:
        if statements:
            out.append(f"\n-- {title}\n")
            out += [s.rstrip().rstrip(";") + ";\n" for s in statements]
    return "".join(out)


def migrated_schema_sql() -> str:
    """current_schema_sql of a database the migrations have just built (in a temporary file)."""
    from convis_db.store.db import connect

    with tempfile.TemporaryDirectory() as folder:
        con = connect(Path(folder) / "schema.duckdb", write=True, create=True)
        try:
            return current_schema_sql(con)
        finally:
            con.close()


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(migrated_schema_sql())
