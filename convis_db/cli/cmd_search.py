"""convis-db search"""

from __future__ import annotations

from dataclasses import asdict

import click

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, query_output
from convis_db.cli.types import listing_limit, score_range
from convis_db.query.search import LEVELS


@click.command("search")
@click.argument("concept")
@click.option("--by", type=click.Choice(LEVELS), default=None,
              help="image: the paper's image-level max_rank_sim of the whole image (default where the database "
                   "has it: the score the paper validates, 'is this a picture of X'); map: the peak of the "
                   "saliency map ('is there X somewhere', small objects included; the default for databases "
                   "made before image-level scores).")
@click.option("--min-score", type=score_range(), default=0.0, show_default=True,
              help="Only images whose score (the --by one) reaches this.")
@click.option("--limit", type=listing_limit(), default=20, show_default=True, help="Most images to list.")
@click.option("--only-self", is_flag=True, help="Score the synset alone (rank_sim) instead of it and its descendants.")
@query_output
@pass_app
def command(app: App, concept: str, by: str | None, min_score: float, limit: int, only_self: bool) -> Result:
    """Images ranked by their score for CONCEPT (which covers its descendants), with the map's peak location.

    Both scores are listed (image_score, map_score); `score` is the --by one. Image-level ties (exact
    rank counts) are broken by the map score.

    \b
    Example:
      convis-db search dog.n.01 --limit 10
      convis-db search animal.n.01 --by map --min-score 0.99 --csv
    """
    with app.database() as db:
        hits = db.search(concept, by=by, min_score=min_score, limit=limit, only_self=only_self)
    return Result(rows=[asdict(h) for h in hits],
                  columns=["image_id", "score", "image_score", "map_score", "peak_x", "peak_y", "path"],
                  title=f"ranked by {hits.by} score", notes=hits.notes)
