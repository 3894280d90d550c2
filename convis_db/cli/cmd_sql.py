"""convis-db sql"""

from __future__ import annotations

import click
import duckdb

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, query_output
from convis_db.errors import UsageError
from convis_db.store.db import connect


def run_sql(db: str, query: str, write: bool, limit: int) -> Result:
    con = connect(db, write=write)
    try:
        try:
            cur = con.execute(query)
        except duckdb.InvalidInputException as exc:
            if "read-only" in str(exc).lower() or "read only" in str(exc).lower():
                raise UsageError("this statement changes the database; sql is read-only unless you add --write.") from exc
            raise UsageError(f"SQL error: {str(exc).splitlines()[0]}") from exc
        except duckdb.Error as exc:
            raise UsageError(f"SQL error: {str(exc).splitlines()[0]}") from exc
        if not cur.description:
            return Result(rows=[], text="ok")
        columns = [d[0] for d in cur.description]
        rows = [dict(zip(columns, r)) for r in cur.fetchmany(limit)]
        return Result(rows=rows, columns=columns)
    finally:
        con.close()


@click.command("sql")
@click.argument("query")
@click.option("--write", is_flag=True, help="Allow statements that change the database.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1), help="Most rows to print.")
@query_output
@pass_app
def command(app: App, query: str, write: bool, limit: int) -> Result:
    """Run SQL against the database (read-only unless --write). Macros: descendants, ancestors, ...

    \b
    Example:
      convis-db sql "SELECT count(*) FROM descendants('animal.n.01')"
      convis-db sql "SELECT name, definition FROM children('dog.n.01')" --csv
    """
    return run_sql(app.db, query, write, limit)
