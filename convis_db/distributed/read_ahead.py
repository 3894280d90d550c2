"""Read the next shard's Parquet files while the merge checks and stores the one before it.

A merge is one writer: DuckDB compresses and writes a shard's rows on one core (an INSERT of
window_top's lists does not run in parallel), so on a 2-core machine the other core sat idle while
pyarrow read the next shard's files, and DuckDB's core idled during the read. ReadAhead reads shard
i + 1 in one background thread while the caller checks and stores shard i: pyarrow releases the GIL
while it decodes, so the two overlap (docs/benchmarks.md, "Merge reads ahead").

It only reads: the files' rows are checked by the merge (shards.read_shard) on the caller's thread,
and the merge inserts the very tables it checked. A file that cannot be read is kept as its
ShardError and raised when the merge reaches that table, so a damaged shard fails at its turn, after
the shards before it were stored, exactly as without reading ahead. Memory: at most two shards'
tables (the one being stored and the next)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from convis_db.store import shard_checks as sc
from convis_db.store.shard_checks import ShardError

log = logging.getLogger(__name__)

#: What a read ahead holds per table name: its rows, or the error reading its file gave.
ShardFiles = Mapping[str, "pa.Table | ShardError"]


def read_files(folder: Path, names: Sequence[str]) -> dict[str, pa.Table | ShardError]:
    """`folder`/NAME.parquet for each of `names`, each as its table or the ShardError its read gave."""
    files: dict[str, pa.Table | ShardError] = {}
    for name in names:
        try:
            files[name] = sc.read_table(folder / f"{name}.parquet")
        except ShardError as exc:
            files[name] = exc
    return files


class ReadAhead:
    """The files of `folders[i]`, read in a background thread one shard ahead of the caller.

    `tables(folder)` names the tables to read for a shard (from its manifest), or None to read nothing
    for it (a shard merged before, a manifest that does not parse: the merge's own checks say why).
    Call `files(i)` for i = 0, 1, ... in order: it starts shard i + 1's reads, then waits for shard
    i's. Use as a context manager: leaving it drops what was read ahead and does not wait for a read
    still running (reads change nothing)."""

    def __init__(self, folders: Sequence[Path], tables: Callable[[Path], Sequence[str] | None]):
        self._folders = list(folders)
        self._tables = tables
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convis-shard-read")
        self._pending: dict[int, Future | None] = {}

    def _start(self, i: int) -> None:
        if i >= len(self._folders) or i in self._pending:
            return
        folder = self._folders[i]
        names = self._tables(folder)
        self._pending[i] = self._pool.submit(read_files, folder, names) if names else None

    def files(self, i: int) -> ShardFiles:
        """Shard i's files as read in the background (an empty mapping if none were read ahead: the
        merge then reads them itself)."""
        self._start(i)
        self._start(i + 1)
        future = self._pending.pop(i)
        return future.result() if future is not None else {}

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        for future in self._pending.values():
            if future is not None:
                future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
