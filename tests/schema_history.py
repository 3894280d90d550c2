"""Databases as an earlier convis-db left them: the shipped migrations below a version, recorded as
migrate() records them, so a test can check that such a file still answers and upgrades."""

from __future__ import annotations

from pathlib import Path

import duckdb

from convis_db.store.migrations import available_migrations

#: (table, column as an older schema named it) -> its name now, for columns a migration renamed, or the
#: expression over the current file's columns that gives it back, for one a migration split.
RENAMED_COLUMNS = {
    (table, old): new
    for table in ("image_scores", "concept_index")
    for old, new in (("peak_x", "work_peak_x"), ("peak_y", "work_peak_y"),
                     ("self_peak_x", "work_self_peak_x"), ("self_peak_y", "work_self_peak_y"))  # schema 010
} | {("windows", "embedding_f16"): "src.main.f16_embedding(embedding_f16_hi, embedding_f16_lo)"}  # schema 017

#: Sequences and the id column whose values they handed out.
_SEQUENCES = {"image_id_seq": ("images", "image_id"), "model_id_seq": ("models", "model_id"),
              "mutual_bank_id_seq": ("mutual_banks", "bank_id"),
              "mutual_explanation_id_seq": ("mutual_explanations", "explanation_id")}


def _source(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """What an older schema's `table` reads from the attached current file `src`: the table itself, or
    for concept_peaks with the self terms before schema 016, its rows with them (concept_full_peaks)."""
    if table == "concept_peaks" and con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE database_name = 'src' AND view_name = 'concept_full_peaks'"
    ).fetchone()[0]:
        return "src.concept_full_peaks"
    return f"src.{table}"


def apply_migrations_below(con: duckdb.DuckDBPyConnection, version: int) -> None:
    """Create schema_migrations and apply (and record) every shipped migration numbered below `version`."""
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
                "checksum VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
    for mig in available_migrations():
        if mig.version < version:
            con.execute(mig.sql)
            con.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
                        [mig.version, mig.name, mig.checksum])


def copy_into_schema_below(source: Path, target: Path, version: int) -> None:
    """Make `target` a database at the schema below `version` holding the rows of `source` (a database
    at the current schema): each table keeps the columns it had then (renamed ones read from their
    names now; tables and columns added since are left out), and the sequences continue after the ids."""
    con = duckdb.connect(str(target))
    try:
        apply_migrations_below(con, version)
        con.execute(f"ATTACH '{source}' AS src (READ_ONLY)")
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND table_name <> 'schema_migrations'").fetchall()]
        first = ("vocabulary", "synsets", "models")  # referred to by others once foreign keys exist
        for table in sorted(tables, key=lambda t: (t not in first, first.index(t) if t in first else 0, t)):
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
                "AND table_name = ? ORDER BY column_index", [table]).fetchall()]
            reads = ", ".join(f"{RENAMED_COLUMNS.get((table, c), c)} AS {c}" for c in cols)
            con.execute(f"DELETE FROM {table}")  # rows a migration seeded (concept_index_state, window_layout)
            con.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {reads} FROM {_source(con, table)}")
        sequences = {r[0] for r in con.execute(
            "SELECT sequence_name FROM duckdb_sequences() WHERE database_name = current_database()").fetchall()}
        for seq in sequences & set(_SEQUENCES):
            table, col = _SEQUENCES[seq]
            top = con.execute(f"SELECT coalesce(max({col}), 0) FROM {table}").fetchone()[0]
            if top:
                con.execute(f"SELECT nextval('{seq}') FROM range(?)", [top]).fetchall()
        con.execute("DETACH src")
    finally:
        con.close()
