"""One DuckDB connection per database file per process, shared by every `Database` open on it.

DuckDB keeps one database instance per file and process, and refuses a second connection in the
other mode ("different configuration"). Opening the same file twice from one notebook must
therefore either share the first connection (same mode) or fail on the *second* open, naming the
open handle, and never disturb the first. `acquire` does exactly that; each `Database` holds one
`SharedConnection` and `release`s it on close, and the last release closes the DuckDB connection.

Nothing here is changed at import; the registry fills as files are opened and empties as they close.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from convis_db.errors import DatabaseLockedError
from convis_db.progress import Progress, no_progress
from convis_db.store.db import connect, require_initialised

log = logging.getLogger(__name__)


@dataclass(eq=False)
class SharedConnection:
    """A connection to one file, in one mode, and how many open `Database` objects use it."""

    key: Path
    write: bool
    con: duckdb.DuckDBPyConnection
    users: int = 1

    @property
    def mode(self) -> str:
        return "read-write" if self.write else "read-only"


_OPEN: dict[Path, SharedConnection] = {}
_LOCK = threading.Lock()


def file_key(path: str | Path) -> Path:
    """The one name of a file in this process: absolute, symlinks resolved."""
    return Path(path).expanduser().resolve()


def open_connection(path: str | Path, write: bool, progress: Progress = no_progress) -> duckdb.DuckDBPyConnection:
    """A new connection to an initialised database (the file is checked and, for writing, migrated,
    `progress` showing the migrations' long steps)."""
    con = connect(path, write=write, progress=progress)
    try:
        require_initialised(con, path)
    except BaseException:
        con.close()
        raise
    return con


def acquire(path: str | Path, write: bool, progress: Progress = no_progress) -> SharedConnection:
    """The process's connection to `path` in this mode: shared when one is open, else a new one.

    Raises DatabaseLockedError (changing nothing that is open) when the file is already open in this
    process in the other mode."""
    key = file_key(path)
    with _LOCK:
        shared = _OPEN.get(key)
        if shared is not None:
            if shared.write != write:
                raise DatabaseLockedError(_mode_conflict(path, shared, write))
            shared.users += 1
            log.debug("sharing the %s connection to %s (%d users)", shared.mode, key, shared.users)
            return shared
        shared = SharedConnection(key, write, open_connection(path, write, progress))
        _OPEN[key] = shared
        return shared


def release(shared: SharedConnection) -> None:
    """One user fewer; the last one closes the connection."""
    with _LOCK:
        shared.users -= 1
        if shared.users > 0:
            return
        if _OPEN.get(shared.key) is shared:
            del _OPEN[shared.key]
        shared.con.close()


def reopen(shared: SharedConnection, path: str | Path) -> None:
    """Replace a shared connection that was closed for a while (see Database.ingest_distributed)."""
    with _LOCK:
        shared.con = open_connection(path, shared.write)
        _OPEN[shared.key] = shared


def suspend(shared: SharedConnection, path: str | Path, what: str) -> None:
    """Close the connection so that another part of this process can open the file by path (the
    distributed ingest's own writer); refused while another Database shares it."""
    with _LOCK:
        if shared.users > 1:
            raise DatabaseLockedError(
                f"{path} is open in {shared.users} Database objects of this process; close the others "
                f"(db.close()) before you {what}.")
        if _OPEN.get(shared.key) is shared:
            del _OPEN[shared.key]
        shared.con.close()


def is_open(path: str | Path) -> bool:
    """Whether this process holds a connection to `path` (for tests and messages)."""
    with _LOCK:
        return file_key(path) in _OPEN


def _mode_conflict(path: str | Path, shared: SharedConnection, want_write: bool) -> str:
    if shared.write:
        return (f"{path} is already open for writing in this process (a Database opened with write=True "
                "or made by create()); use that Database, whose queries read the same file, or close it "
                "first (db.close()), then open the file read-only.")
    return (f"{path} is already open read-only in this process; close every Database open on it "
            "(db.close()) before you open it with write=True.")
