"""Databases as an earlier convis-db left them: the shipped migrations below a version, recorded as
migrate() records them, so a test can check that such a file still answers and upgrades."""

from __future__ import annotations

import duckdb

from convis_db.store.migrations import available_migrations


def apply_migrations_below(con: duckdb.DuckDBPyConnection, version: int) -> None:
    """Create schema_migrations and apply (and record) every shipped migration numbered below `version`."""
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
                "checksum VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
    for mig in available_migrations():
        if mig.version < version:
            con.execute(mig.sql)
            con.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
                        [mig.version, mig.name, mig.checksum])
