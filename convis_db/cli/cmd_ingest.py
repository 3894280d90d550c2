"""convis-db ingest"""

from __future__ import annotations

import click

from convis_db.cli.context import App, batch_size_option, device_option, pass_app, precision_option
from convis_db.cli.output import Result, emit
from convis_db.engine.settings import PAPER, preset_options
from convis_db.errors import UsageError
from convis_db.models.device import resolve_device
from convis_db.models.precision import resolve_precision


def settings_options(f):
    """--preset and --stride/--small/--large/--max-pixels/--top-k; unset means the database's (or the paper's)."""
    f = click.option("--preset", type=click.Choice(["paper", "cpu-fast"]), default=None,
                     help="paper: 300,000 px, stride 16 (the default); cpu-fast: 50,000 px, stride 32, for CPUs. "
                          "Options given alongside override it.")(f)
    f = click.option("--top-k", type=click.IntRange(1), default=None, help="Top concepts stored per window [100].")(f)
    f = click.option("--max-pixels", type=click.IntRange(1), default=None,
                     help="Working-image size in pixels [300000].")(f)
    f = click.option("--large", type=click.IntRange(1), default=None, help="Large patch side [128].")(f)
    f = click.option("--small", type=click.IntRange(1), default=None, help="Small patch side [64].")(f)
    f = click.option("--stride", type=click.IntRange(1), default=None, help="Window stride in pixels [16].")(f)
    return f


@click.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("-r", "--recursive", is_flag=True, help="Descend into folders.")
@batch_size_option
@click.option("--retry-failed", is_flag=True, help="Try again files that failed in an earlier run.")
@click.option("--backfill-image-level", is_flag=True,
              help="Add the image-level scores (one whole-image pass each) to stored images that lack them "
                   "(ingested before convis-db stored them), reading their files again. PATHS are optional.")
@click.option("--model", envvar="CONVIS_MODEL", default=None,
              help="Model to use (default: the database's). Env: CONVIS_MODEL.")
@click.option("--pretrained", envvar="CONVIS_PRETRAINED", default=None, help="Weights of --model.")
@device_option
@precision_option
@settings_options
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a Ray Data actor pool (one GPU per worker when the cluster has GPUs) "
                   "writes Parquet shards, merged here. Needs pip install 'convis-db[ray]'.")
@click.option("--address", default=None, help="Ray cluster to join (--engine ray): auto (the cluster this node "
                                              "belongs to) or HEAD:6379 [RAY_ADDRESS, else a new local cluster].")
@click.option("--shards", "shards_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of the shards (--engine ray); on a cluster, storage every node reaches [DB.shards].")
@click.option("--shard-size", type=click.IntRange(1), default=64, show_default=True,
              help="Files per shard (--engine ray): the unit of work, written once and resumed whole.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Ray actors (--engine ray) [one per GPU, else one per two CPUs of the cluster].")
@click.option("--no-merge", is_flag=True, help="Write shards only (--engine ray); merge later with convis-db merge.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file outcomes and summary as JSON.")
@pass_app
def command(app: App, paths, recursive, batch_size, retry_failed, backfill_image_level, model, pretrained, device,
            precision, preset, stride, small, large, max_pixels, top_k, engine, address, shards_dir, shard_size, workers,
            no_merge, as_json) -> None:
    """Explain images and store every concept's score, idempotently (files already stored are skipped).

    A file that cannot be used is recorded with its reason and the run goes on; it is tried again
    only with --retry-failed. Each image is stored in one transaction, so an interrupted or killed
    run leaves whole images only: run the same command again to do the rest. Ctrl-C stops after the
    current image (exit code 130); a second Ctrl-C stops at once. SIGTERM does the same (exit code 143).

    \b
    Example:
      convis-db --db x.duckdb ingest photos/ --recursive
      convis-db --db x.duckdb ingest a.jpg b.png --stride 32 --max-pixels 100000
      convis-db --db old.duckdb ingest --backfill-image-level
      convis-db --db x.duckdb ingest /shared/photos -r --engine ray --address auto --shards /shared/shards

    With --engine ray, Ray Data workers explain shards of --shard-size files into Parquet under
    --shards, merged here as they finish (docs/scale.md); run the same command again to resume.
    """
    if not paths and not backfill_image_level:
        raise click.UsageError("give image files or folders to ingest (or --backfill-image-level).")
    options = dict(stride=stride, small=small, large=large, max_pixels=max_pixels, top_k=top_k)
    if preset:
        base = preset_options(preset)
        options = {k: (v if v is not None else base.get(k)) for k, v in options.items()}
    if engine == "ray" and backfill_image_level:
        raise UsageError("--backfill-image-level runs in this process; drop --engine ray for it.")
    if engine == "local" and (address or shards_dir or no_merge or workers):
        raise UsageError("--address, --shards, --workers and --no-merge belong to --engine ray.")
    dev = resolve_device(device) if engine == "local" else None
    with app.database(dev or "cpu", resolve_precision(precision, dev) if dev else None, write=True) as db:
        if engine == "ray":  # Ray is imported only here; each worker resolves --precision on its own device
            report = db.ingest_distributed(paths, recursive=recursive, shards_dir=shards_dir, address=address,
                                           shard_size=shard_size, workers=workers, batch_size=batch_size,
                                           model=model, pretrained=pretrained, settings=options,
                                           retry_failed=retry_failed, merge=not no_merge, progress=app.progress,
                                           precision=precision)
        else:
            chosen = db.profile.settings_for(options)
            if dev.type == "cpu" and chosen.stride == PAPER.stride and chosen.max_pixels == PAPER.max_pixels \
                    and not app.quiet:
                click.echo("note: the paper's settings on a CPU take minutes per image with ViT-B-32; "
                           "--preset cpu-fast is about 20x lighter (on a new database).", err=True)
            report = db.ingest(paths, recursive=recursive, settings=options, batch_size=batch_size,
                               progress=app.progress, retry_failed=retry_failed, model=model, pretrained=pretrained,
                               backfill_image_level=backfill_image_level)
    _emit(report, as_json, backfill_image_level)


def _emit(report, as_json: bool, backfill_image_level: bool = False) -> None:
    summary = report.summary()
    rows = [o.__dict__ for o in report.outcomes]
    text_lines = [f"{o.status:8s} {o.path}" + (f"  (image {o.image_id})" if o.image_id else "")
                  + (f"  {o.reason}" if o.reason else "") for o in report.outcomes
                  if o.status not in ("ingested", "backfilled")]
    text_lines.append(
        (f"image-level scores added to {summary['backfilled']} stored images; " if backfill_image_level else "")
        + f"ingested {summary['ingested']}, skipped {summary['skipped']}, failed {summary['failed']}; "
        f"{summary['windows']} windows in {summary['seconds']:.1f} s ({summary['windows_per_s']} windows/s, "
        f"{summary['images_per_s']} images/s" + (f", {summary['precision']}" if summary.get("precision") else "") + ")"
        + ("; INTERRUPTED" if report.interrupted else ""))
    if summary.get("engine") == "ray":
        text_lines.append(f"shards: {summary['shards_total']} in {summary['shards_dir']}, {summary['shards_explained']} "
                          f"explained now by {summary['workers']} workers, {summary['shards_reused']} finished before, "
                          f"{summary['shards_merged_before']} merged before")
    emit(Result(rows=rows, data={"summary": summary, "files": rows}, text="\n".join(text_lines)),
         "json" if as_json else "table")
    if report.interrupted and summary.get("engine") == "ray":
        click.echo(f"interrupted: {summary['ingested']} images merged in this run; finished shards are kept. "
                   "Run the same command again to do the rest.", err=True)
        click.get_current_context().exit(130)
    if report.interrupted:
        terminated = report.stopped_by == "SIGTERM"
        click.echo(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: stopped after the current image; "
                   f"{summary['ingested']} images stored in this run, each one whole. Run the same command again "
                   "to ingest the rest.", err=True)
        click.get_current_context().exit(143 if terminated else 130)
