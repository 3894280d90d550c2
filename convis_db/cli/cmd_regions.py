"""convis-db regions"""

from __future__ import annotations

from dataclasses import asdict

import click

from convis_db.cli.context import App, device_option, pass_app
from convis_db.cli.output import Result, query_output
from convis_db.cli.types import listing_limit, score_range
from convis_db.models.device import resolve_device
from convis_db.query.regions import DEFAULT_MIN_SCORE


@click.command("regions")
@click.argument("concept")
@click.option("--image", help="Only this stored image (id, path or sha256).")
@click.option("--min-score", type=score_range(), default=DEFAULT_MIN_SCORE, show_default=True,
              help="Saliency threshold: a region is a connected part of the map at or above it.")
@click.option("--limit", type=listing_limit(), default=100, show_default=True, help="Most regions to list.")
@device_option
@query_output
@pass_app
def command(app: App, concept: str, image: str | None, min_score: float, limit: int, device: str) -> Result:
    """Regions that match CONCEPT, as boxes in original-image pixels with their peak score.

    \b
    Example:
      convis-db regions dog.n.01 --min-score 0.98
      convis-db regions animal.n.01 --image 3 --json
    """
    with app.database(resolve_device(device)) as db:
        rows = [asdict(r) for r in db.regions(concept, min_score=min_score, image=image, limit=limit)]
    return Result(rows=rows, columns=["image_id", "score", "x0", "y0", "x1", "y1", "area_fraction", "path"])
