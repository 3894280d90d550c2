"""One transaction, committed when the block ends and rolled back when it raises.

Every multi-statement write of convis-db (an image, a hierarchy, a model's definitions, a shard, an
index run) goes through this, so each is all or nothing, and the error a user sees is the one that
stopped the write: after some failures (a full disk, an interrupted statement) DuckDB has already
aborted the transaction, and a second ROLLBACK would raise "no transaction is active" instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import duckdb

log = logging.getLogger(__name__)


def rollback_quietly(con: duckdb.DuckDBPyConnection) -> None:
    """ROLLBACK in an error path without hiding the error being handled."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as exc:
        log.debug("rollback after an error: %s", (str(exc).splitlines() or ["?"])[0])


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT around the block; ROLLBACK (quietly) if it raises anything, Ctrl-C included."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        rollback_quietly(con)
        raise
    con.execute("COMMIT")
