"""convis-db merge"""

from __future__ import annotations

import click

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, emit


@click.command("merge")
@click.argument("shards_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one row per shard as JSON.")
@pass_app
def command(app: App, shards_dir: str, as_json: bool) -> None:
    """Merge the Parquet shards an `ingest --engine ray` wrote (here or on a cluster) into the database.

    Each shard is checked whole before it is stored; shards are written in groups of about a million
    windows, one transaction per group. Shards merged before and images already stored (same content)
    are skipped, so running it again changes nothing. Unfinished shards are left alone.

    \b
    Example:
      convis-db --db x.duckdb merge /shared/convis-shards
    """
    with app.database(write=True) as db:
        results = db.merge(shards_dir, progress=app.progress)
    rows = [{"shard": r.shard, "status": r.status, "images": r.images, "skipped": r.skipped, "failed": r.failed}
            for r in results]
    added = sum(r.images for r in results)
    text = "\n".join(f"{r['status']:14s} {r['shard']}  +{r['images']} images, {r['skipped']} already stored, "
                     f"{r['failed']} failed" for r in rows)
    text += ("\n" if text else "") + (f"merged {sum(r.status == 'merged' for r in results)} of {len(results)} shards; "
                                      f"{added} images added.")
    emit(Result(rows=rows, data={"shards": rows, "images_added": added}, text=text), "json" if as_json else "table")
