"""convis-db search"""

from __future__ import annotations

import click

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, query_output
from convis_db.cli.types import listing_limit, score_range
from convis_db.query.search import search_images


@click.command("search")
@click.argument("concept")
@click.option("--min-score", type=score_range(), default=0.0, show_default=True,
              help="Only images whose score reaches this.")
@click.option("--limit", type=listing_limit(), default=20, show_default=True, help="Most images to list.")
@click.option("--only-self", is_flag=True, help="Score the synset alone (rank_sim) instead of it and its descendants.")
@query_output
@pass_app
def command(app: App, concept: str, min_score: float, limit: int, only_self: bool) -> Result:
    """Images ranked by their score for CONCEPT (which covers its descendants), with the peak location.

    \b
    Example:
      convis-db search dog.n.01 --limit 10
      convis-db search animal.n.01 --min-score 0.99 --csv
    """
    with app.reader() as con:
        rows = search_images(con, concept, min_score, limit, only_self)
    return Result(rows=rows, columns=["image_id", "score", "peak_x", "peak_y", "path"])
