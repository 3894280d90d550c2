"""convis-db concepts"""

from __future__ import annotations

import click

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, query_output
from convis_db.query.concepts import concept_ancestors, concept_children, find_concepts


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
    with app.reader() as con:
        if children:
            return Result(rows=concept_children(con, query),
                          columns=["synset", "n_children", "n_descendants", "definition"])
        if ancestors:
            return Result(rows=concept_ancestors(con, query), columns=["synset", "distance", "depth", "definition"])
        rows = find_concepts(con, query, limit)
    return Result(rows=rows, columns=["synset", "definition", "n_children", "n_descendants", "path"])
