"""Open the DuckDB file: read-only for queries, read-write for init and ingest.

DuckDB lets one process hold a file for writing at a time (any number may read it together while
no one writes). A second process gets an IOException; DuckDB 1.x-2.0 words it

    IO Error: Could not set lock on file "/x.duckdb": Conflicting lock is held in
    /usr/bin/python3.11 (PID 4242). See also https://duckdb.org/docs/current/connect/concurrency

We turn that into DatabaseLockedError naming the holder's PID and its command line (from
/proc/PID/cmdline where readable, else the executable DuckDB names).
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
_HOLDER = re.compile(r"(?:lock is )?held in (.+?) \(PID (\d+)\)")


def _is_lock_error(message: str) -> bool:
    text = message.lower()
    return "lock" in text and ("could not set lock" in text or "conflicting lock" in text or "pid" in text)


def _holder_description(message: str) -> str:
    """'process 4242 (convis-db --db x.duckdb ingest photos)' from DuckDB's lock error text."""
    match = _HOLDER.search(message)
    exe = match.group(1).strip() if match else ""
    pid_match = match or _PID.search(message)
    if not pid_match:
        return "another process"
    pid = pid_match.group(2) if match else pid_match.group(1)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    cmd = cmd or exe
    if len(cmd) > 500:  # an ingest of many files named one by one
        cmd = cmd[:497] + "..."
    return f"process {pid}" + (f" ({cmd})" if cmd else "")


def _first_line(text: str) -> str:
    return text.splitlines()[0].rstrip("!. ") if text else "unknown error"


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
        if _is_lock_error(text):
            raise DatabaseLockedError(
                f"{path} is in use by {_holder_description(text)}. Wait for it to finish "
                "(an ingest or init holds the file until it ends), or stop it, then try again. "
                "Query commands can share the file with each other, not with a writer."
            ) from exc
        raise DatabaseError(f"cannot open {path}: {_first_line(text)}. Is it a convis-db DuckDB file?") from exc
    except duckdb.Error as exc:
        text = str(exc)
        if "different configuration" in text:  # this process already has it open in the other mode
            raise DatabaseLockedError(
                f"{path} is already open in this process {'for writing' if read_only else 'read-only'}; "
                "close that connection first (one process opens a file in one mode at a time)."
            ) from exc
        raise DatabaseError(f"cannot open {path}: {_first_line(text)}. Is it a convis-db DuckDB file?") from exc
    try:
        # No progress bar: DuckDB would draw it on stdout, in the middle of --json/--csv output.
        con.execute("SET enable_progress_bar = false")
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
