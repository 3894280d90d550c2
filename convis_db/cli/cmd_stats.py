"""convis-db stats"""

from __future__ import annotations

import click

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, query_output


@click.command("stats")
@query_output
@pass_app
def command(app: App) -> Result:
    """Counts of what the database holds: hierarchy, models, images, windows, scores, bytes.

    \b
    Example:
      convis-db --db x.duckdb stats --json
    """
    with app.database() as db:
        stats = db.stats()
    rows = [{"item": k, "value": v} for k, v in stats.items()]
    return Result(rows=rows, data=stats)
