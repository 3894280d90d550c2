"""convis-db sql"""

from __future__ import annotations

import click

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, output_format, query_output
from convis_db.query.sql import TABLE_LIMIT, fetch_answer


def _parse_tables(values: tuple[str, ...]) -> dict[str, str]:
    tables: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r} is not NAME=FILE (e.g. --table labels=labels.csv).",
                                     param_hint="--table")
        tables[name] = path
    return tables


@click.command("sql")
@click.argument("query")
@click.option("--write", is_flag=True,
              help="Open the file read-write: any DuckDB statement runs, with your permissions (it can change "
                   "or delete stored data, COPY ... TO any file, ATTACH and write other databases, INSTALL "
                   "extensions). Without it the database is opened read-only and DuckDB touches no other file.")
@click.option("--table", "tables", multiple=True, metavar="NAME=FILE",
              help="Read a Parquet, CSV or JSON-lines file as table NAME (repeatable). Read-only queries can use "
                   "files only this way: read_csv/read_parquet on paths are refused without --write.")
@click.option("--limit", type=click.IntRange(0, 10**12), default=None,
              help=f"Most rows to print; 0 = all. Default: {TABLE_LIMIT} for the table (a cut is said on stderr), "
                   "every row with --csv or --json.")
@query_output
@pass_app
def command(app: App, query: str, write: bool, tables: tuple[str, ...], limit: int | None) -> Result:
    """Run SQL against the database (read-only unless --write). Macros: descendants, ancestors, ...

    \b
    Read-only (the default) means no file is written: DuckDB is opened read-only with external
    access off and its settings locked, so statements that change the database, COPY ... TO,
    EXPORT DATABASE, ATTACH, INSTALL, reading arbitrary paths and changing settings (SET, PRAGMA,
    CALL enable_logging) are refused. Join your own files with --table.

    \b
    Example:
      convis-db sql "SELECT count(*) FROM descendants('animal.n.01')"
      convis-db sql "SELECT name, definition FROM children('dog.n.01')" --csv
      convis-db sql "SELECT l.label, i.path FROM labels l JOIN images i USING (image_id)" --table labels=labels.csv
    """
    if limit is None:
        limit = TABLE_LIMIT if output_format() == "table" else 0
    tables = _parse_tables(tables)
    with app.database(write=write) as db:
        answer = fetch_answer(db.sql(query, tables=tables), limit or None, write)
    if answer.columns is None:
        return Result(rows=[], text="ok")
    notes = []
    if answer.truncated:
        notes.append(f"showing the first {len(answer.rows):,} rows; the query returned more. "
                     "Use --limit 0 (or --csv/--json, which print every row) for all of them.")
    return Result(rows=answer.rows, columns=answer.columns, notes=notes)
