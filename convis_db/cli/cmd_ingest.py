"""convis-db ingest"""

from __future__ import annotations

import click

from convis_db.cli.context import App, batch_size_option, device_option, pass_app, precision_option
from convis_db.cli.output import Result, emit
from convis_db.engine.settings import CPU_FAST, PAPER
from convis_db.ingest import Ingestor
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
@click.option("--json", "as_json", is_flag=True, help="Print the per-file outcomes and summary as JSON.")
@pass_app
def command(app: App, paths, recursive, batch_size, retry_failed, backfill_image_level, model, pretrained, device,
            precision, preset, stride, small, large, max_pixels, top_k, as_json) -> None:
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
    """
    if not paths and not backfill_image_level:
        raise click.UsageError("give image files or folders to ingest (or --backfill-image-level).")
    options = dict(stride=stride, small=small, large=large, max_pixels=max_pixels, top_k=top_k)
    if preset:
        base = PAPER if preset == "paper" else CPU_FAST
        options = {k: (v if v is not None else base.get(k)) for k, v in options.items()}
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    with Ingestor(app.db, model=model, pretrained=pretrained, device=dev, options=options,
                  batch_size=batch_size, progress=app.progress, retry_failed=retry_failed,
                  precision=precision) as ingestor:
        if dev.type == "cpu" and ingestor.settings.stride == PAPER["stride"] and \
                ingestor.settings.max_pixels == PAPER["max_pixels"] and not app.quiet:
            click.echo("note: the paper's settings on a CPU take minutes per image with ViT-B-32; "
                       "--preset cpu-fast is about 20x lighter (on a new database).", err=True)
        report = ingestor.backfill_image_level() if backfill_image_level else None
        if paths and not (report and report.interrupted):
            ingested = ingestor.run(paths, recursive=recursive)
            if report is not None:
                ingested.outcomes = report.outcomes + ingested.outcomes
                ingested.seconds += report.seconds
            report = ingested
    summary = report.summary()
    rows = [o.__dict__ for o in report.outcomes]
    text_lines = [f"{o.status:8s} {o.path}" + (f"  (image {o.image_id})" if o.image_id else "")
                  + (f"  {o.reason}" if o.reason else "") for o in report.outcomes
                  if o.status not in ("ingested", "backfilled")]
    text_lines.append(
        (f"image-level scores added to {summary['backfilled']} stored images; " if backfill_image_level else "")
        + f"ingested {summary['ingested']}, skipped {summary['skipped']}, failed {summary['failed']}; "
        f"{summary['windows']} windows in {summary['seconds']:.1f} s ({summary['windows_per_s']} windows/s, "
        f"{summary['images_per_s']} images/s, {summary['precision']})" + ("; INTERRUPTED" if report.interrupted else ""))
    emit(Result(rows=rows, data={"summary": summary, "files": rows}, text="\n".join(text_lines)),
         "json" if as_json else "table")
    if report.interrupted:
        terminated = report.stopped_by == "SIGTERM"
        click.echo(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: stopped after the current image; "
                   f"{summary['ingested']} images stored in this run, each one whole. Run the same command again "
                   "to ingest the rest.", err=True)
        click.get_current_context().exit(143 if terminated else 130)
