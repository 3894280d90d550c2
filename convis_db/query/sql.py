"""Run a user's SQL against the database: read-only (no file written) unless asked to write."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from convis_db.errors import UsageError

log = logging.getLogger(__name__)

#: Rows a readable table shows by default (exports carry every row).
TABLE_LIMIT = 1000
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json",
            ".jsonl": "json", ".ndjson": "json"}


@dataclass
class SqlAnswer:
    columns: list[str] | None      # None for a statement that returns no result set
    rows: list[dict[str, Any]]
    truncated: bool                # more rows existed than `limit`


def _dataset(name: str, path: str):
    """A lazily read pyarrow dataset for --table NAME=FILE.

    pyarrow reads the file and hands DuckDB the rows, so the read-only connection keeps DuckDB's
    external access off (DuckDB itself opens no path, and cannot be turned into a writer)."""
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds

    if not _TABLE_NAME.match(name):
        raise UsageError(f"--table name {name!r} is not a plain SQL name; use letters, digits and _ (e.g. labels).")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"--table {name}={path}: no such file; give a Parquet, CSV or JSON-lines file.")
    fmt = _FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise UsageError(f"--table {name}={path}: unknown file type {file.suffix!r}; use .parquet, .csv, .tsv or .jsonl.")
    try:
        if file.suffix.lower() == ".tsv":
            return ds.dataset(str(file), format=ds.CsvFileFormat(parse_options=pacsv.ParseOptions(delimiter="\t")))
        return ds.dataset(str(file), format=fmt)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise UsageError(f"--table {name}={path}: cannot read it as {fmt}: {str(exc).splitlines()[0]}") from exc


def register_tables(con: duckdb.DuckDBPyConnection, tables: dict[str, str | Path]) -> None:
    """Make each NAME=FILE a table of the connection (every file checked before any is registered)."""
    datasets = {name: _dataset(name, str(path)) for name, path in tables.items()}
    for name, dataset in datasets.items():
        con.register(name, dataset)


@contextmanager
def sql_errors(write: bool) -> Iterator[None]:
    """DuckDB's errors on a user's SQL as one-line UsageErrors that say what to do."""
    try:
        yield
    except duckdb.PermissionException as exc:
        raise UsageError(
            "this statement reads or writes files outside the database, which sql refuses without --write "
            f"({_first_line(exc)}). Read your own files with --table NAME=FILE.",
            python=f"this statement reads or writes files outside the database, which a read-only Database refuses "
                   f"({_first_line(exc)}). Read your own files with db.sql(query, tables={{'name': 'file.csv'}})."
        ) from exc
    except duckdb.Error as exc:
        text = str(exc).lower()
        if not write and "configuration has been locked" in text:
            raise UsageError(
                "sql without --write cannot change DuckDB settings (SET, RESET, PRAGMA, CALL enable_logging): "
                f"read-only means no setting can make DuckDB write a file ({_first_line(exc)}). Add --write "
                "to change settings.",
                python="a read-only Database cannot change DuckDB settings (SET, RESET, PRAGMA, CALL enable_logging): "
                       f"read-only means no setting can make DuckDB write a file ({_first_line(exc)}). Open it with "
                       "convis_db.open(path, write=True) to change settings.") from exc
        if not write and ("read-only" in text or "read only" in text):
            raise UsageError("this statement changes the database, which is open read-only: add --write (Python: "
                             "convis_db.open(path, write=True)) to change it.",
                             python="this statement changes the database, which is open read-only: open it with "
                                    "convis_db.open(path, write=True) to change it.") from exc
        raise UsageError(f"SQL error: {_first_line(exc)}") from exc


def fetch_answer(relation: duckdb.DuckDBPyRelation | None, limit: int | None = None,
                 write: bool = False) -> SqlAnswer:
    """The rows of a relation from Database.sql, at most `limit` (None = all)."""
    if relation is None:
        return SqlAnswer(None, [], False)
    with sql_errors(write):
        columns = list(relation.columns)
        fetched = (relation if limit is None else relation.limit(limit + 1)).fetchall()
    truncated = limit is not None and len(fetched) > limit
    rows = [dict(zip(columns, r)) for r in fetched[:limit]]
    return SqlAnswer(columns, rows, truncated)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or ["unknown error"])[0]
