"""convis-db concepts"""

from __future__ import annotations

import click

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, query_output
from convis_db.query.concepts import find_concepts
from convis_db.store.db import connect, require_initialised


@click.command("concepts")
@click.argument("query")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000), help="Most synsets to list.")
@query_output
@pass_app
def command(app: App, query: str, limit: int) -> Result:
    """Find synsets by name (dog.n.01), lemma (dog) or definition words, with each one's path to the root.

    \b
    Example:
      convis-db concepts dog
      convis-db concepts "domesticated canis" --json
    """
    con = connect(app.db)
    try:
        require_initialised(con, app.db)
        rows = find_concepts(con, query, limit)
    finally:
        con.close()
    return Result(rows=rows, columns=["synset", "definition", "n_children", "n_descendants", "path"])
