"""Open the DuckDB file: read-only for queries, read-write for init and ingest.

DuckDB lets one process write a file at a time; a second process gets a lock error whose text names
the holder's PID. We turn that into DatabaseLockedError naming the holder's command line.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import duckdb

from convis_db.errors import DatabaseError, DatabaseLockedError
from convis_db.store.migrations import check_not_newer, migrate

log = logging.getLogger(__name__)
_PID = re.compile(r"PID (\d+)")


def _holder_description(message: str) -> str:
    match = _PID.search(message)
    if not match:
        return "another process"
    pid = match.group(1)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return f"process {pid}" + (f" ({cmd})" if cmd else "")


def connect(path: str | Path, *, write: bool = False, create: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the database file, migrated when opened for writing.

    Raises DatabaseError when the file does not exist (unless `create`), is held by another process,
    is not a DuckDB file, or comes from a newer schema.
    """
    path = Path(path).expanduser()
    if not path.exists() and not create:
        raise DatabaseError(
            f"no database at {path}. Create one with: convis-db --db {path} init "
            "(or point --db / CONVIS_DB at an existing file)."
        )
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    read_only = not write
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise DatabaseLockedError(
                f"{path} is in use by {_holder_description(text)}. Wait for it to finish "
                "(an ingest holds the file until it ends), or stop it, then try again."
            ) from exc
        raise DatabaseError(f"cannot open {path}: {text.splitlines()[0]}. Is it a convis-db DuckDB file?") from exc
    except duckdb.Error as exc:
        raise DatabaseError(f"cannot open {path}: {str(exc).splitlines()[0]}. Is it a convis-db DuckDB file?") from exc
    try:
        if write:
            migrate(con, str(path))
        else:
            check_not_newer(con, str(path))
    except Exception:
        con.close()
        raise
    return con


def require_initialised(con: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    """Fail clearly on a file that has no hierarchy yet."""
    try:
        n = con.execute("SELECT count(*) FROM synsets").fetchone()[0]
    except duckdb.CatalogException:
        n = 0
    if not n:
        raise DatabaseError(f"{path} has no WordNet hierarchy yet. Run: convis-db --db {path} init --model ... --pretrained ...")
