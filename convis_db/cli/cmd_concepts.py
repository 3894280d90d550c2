"""convis-db concepts"""

from __future__ import annotations

from dataclasses import asdict

import click

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, query_output


@click.command("concepts")
@click.argument("query")
@click.option("--children", is_flag=True, help="List the direct children of one synset.")
@click.option("--ancestors", is_flag=True, help="List every ancestor of one synset (all DAG paths).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000), help="Most synsets to list.")
@query_output
@pass_app
def command(app: App, query: str, children: bool, ancestors: bool, limit: int) -> Result:
    """Find synsets by name (dog.n.01), lemma (dog) or definition words, with each one's path to the root.

    \b
    Example:
      convis-db concepts dog
      convis-db concepts "domesticated canis" --json
      convis-db concepts dog.n.01 --ancestors
      convis-db concepts animal.n.01 --children
    """
    if children and ancestors:
        raise click.UsageError("--children and --ancestors are exclusive; pick one.")
    with app.database() as db:
        if children:
            return Result(rows=[asdict(c) for c in db.children(query)],
                          columns=["synset", "n_children", "n_descendants", "definition"])
        if ancestors:
            return Result(rows=[asdict(a) for a in db.ancestors(query)],
                          columns=["synset", "distance", "depth", "definition"])
        rows = [asdict(c) for c in db.concepts(query, limit=limit)]
    return Result(rows=rows, columns=["synset", "definition", "n_children", "n_descendants", "path"])
