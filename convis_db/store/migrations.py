"""Apply schema/NNN_name.sql in order, each in its own transaction, recorded in schema_migrations.

Re-applying is a no-op. A database whose recorded version is newer than the newest file we ship was
written by a newer convis-db, and is refused rather than misread.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from convis_db.errors import DatabaseError
from convis_db.paths import schema_dir
from convis_db.progress import Progress, no_progress
from convis_db.store.transaction import transaction

log = logging.getLogger(__name__)
#: schema/current.sql: the whole current schema in one file, for reading (store/schema_dump.py).
CURRENT_SCHEMA_FILE = "current.sql"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def available_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or schema_dir()
    found = []
    for path in sorted(folder.glob("*.sql")):
        if path.name == CURRENT_SCHEMA_FILE:
            continue  # the readable summary of them all (store/schema_dump.py), not a migration
        match = _NAME.match(path.name)
        if not match:
            raise DatabaseError(f"schema file {path.name} is not named NNN_name.sql; rename it.")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseError(f"duplicate schema versions in {folder}: {versions}")
    if not found:
        raise DatabaseError(f"no schema files found in {folder}; the installation is broken, reinstall convis-db.")
    return found


def _ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, checksum VARCHAR NOT NULL,
               applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"""
    )


def applied_versions(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
    ).fetchone()[0]
    if not exists:
        return {}
    return dict(con.execute("SELECT version, name FROM schema_migrations").fetchall())


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """Whether `table` has `column` (for migration steps, which meet every earlier schema; readers
    read the current one only)."""
    return con.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND column_name = ? "
                       "AND database_name = current_database() AND schema_name = current_schema()",
                       [table, column]).fetchone()[0] > 0


def has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether this database file has the table (for migration steps: tables of later migrations are
    missing from older files; readers read the current schema only)."""
    return con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ? "
                       "AND database_name = current_database() AND schema_name = current_schema()",
                       [table]).fetchone()[0] > 0


def check_not_newer(con: duckdb.DuckDBPyConnection, db_path: str) -> None:
    newest = max(m.version for m in available_migrations())
    applied = applied_versions(con)
    if applied and max(applied) > newest:
        raise DatabaseError(
            f"{db_path} has schema version {max(applied)}, newer than this convis-db knows ({newest}). "
            "Upgrade convis-db (pip install -U convis-db) to open it."
        )


def _check_checksums(con: duckdb.DuckDBPyConnection, db_path: str) -> list[int]:
    """Versions whose recorded checksum differs from the migration file shipped now (logged).

    A shipped migration is never edited once released; a difference means the file was changed
    after this database applied it (a development build, or a patched install). The schema the
    database has is the one it recorded, so this warns rather than refuses."""
    recorded = dict(con.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    changed = [m.version for m in available_migrations()
               if m.version in recorded and recorded[m.version] not in (m.checksum, "")]
    for version in changed:
        log.warning("%s: schema migration %03d was applied from a different text than the one shipped now; "
                    "the database keeps the schema it recorded", db_path or "database", version)
    return changed


def _check_record_present(con: duckdb.DuckDBPyConnection, db_path: str) -> None:
    """A file with convis-db tables but no schema_migrations lost its record (a dropped table):
    applying 001 again would fail half-way, and guessing the version could misread the file."""
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "schema_migrations" not in names and names & {"synsets", "images", "windows"}:
        raise DatabaseError(
            f"{db_path} has convis-db tables but no schema_migrations table, so its schema version is unknown "
            "(was the table dropped?). Restore the file from a copy, or rebuild it with init and ingest; "
            "query commands still read it."
        )


def pending_versions(con: duckdb.DuckDBPyConnection) -> list[int]:
    """The shipped migrations a convis-db file has not applied yet (empty for a current file, and for a
    file with no schema_migrations record: an empty DuckDB file, or one whose record was lost)."""
    done = applied_versions(con)
    if not done:
        return []
    return [m.version for m in available_migrations() if m.version not in done]


def migrate(con: duckdb.DuckDBPyConnection, db_path: str = "", progress: Progress = no_progress) -> list[int]:
    """Apply pending migrations; returns the versions applied now. A version with a step in
    migration_steps.STEPS runs it first, in the same transaction (`progress` shows it on big files)."""
    from convis_db.store.migration_steps import STEPS

    check_not_newer(con, db_path)
    _check_record_present(con, db_path)
    _ensure_table(con)
    done = applied_versions(con)
    _check_checksums(con, db_path)
    applied_now = []
    for mig in available_migrations():
        if mig.version in done:
            continue
        log.info("applying schema %03d_%s", mig.version, mig.name)
        with transaction(con):
            if mig.version in STEPS:
                STEPS[mig.version](con, mig.sql, progress)
            con.execute(mig.sql)
            con.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
                        [mig.version, mig.name, mig.checksum])
        applied_now.append(mig.version)
    return applied_now
