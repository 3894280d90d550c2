"""convis-db demo"""

from __future__ import annotations

import click

from convis_db.cli.context import App, device_option, model_options, pass_app, precision_option
from convis_db.cli.output import Result, emit
from convis_db.demo import run_demo
from convis_db.models.device import resolve_device
from convis_db.models.precision import resolve_precision


@click.command("demo")
@model_options()
@device_option
@precision_option
@click.option("--out", "out_dir", default="convis-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the map PNGs.")
@click.option("--preset", type=click.Choice(["auto", "paper", "cpu-fast"]), default="auto", show_default=True,
              help="auto: the paper's settings on a GPU, a lighter preset (50k px, stride 32) on a CPU.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def command(app: App, model, pretrained, device, precision, out_dir, preset, as_json) -> None:
    """Explain the shipped sample images: build the database, write maps, print top concepts.

    With the default model the weights are downloaded once where a network exists. Offline, pass
    --pretrained PATH (a local checkpoint) or --pretrained none (random weights: a smoke run).

    \b
    Example:
      convis-db demo
      convis-db --db demo.duckdb demo --pretrained none --out demo-maps
    """
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    if not app.quiet:
        chosen = preset if preset != "auto" else ("paper" if dev.type == "cuda" else "cpu-fast")
        if chosen == "cpu-fast":
            click.echo("demo: CPU preset (about 50,000-pixel images, stride 32) for a quick run; "
                       "use --preset paper for the paper's settings.", err=True)
    report = run_demo(app.db, model, pretrained, dev, out_dir, preset, app.progress, precision=precision)
    lines = [(f"database {report.db} (model {report.model} in {report.precision}, preset {report.preset}: "
              f"{report.settings})")]
    for img in report.images:
        lines.append(f"\nimage {img['image_id']}: {img['path']}")
        for t in img["top_concepts"]:
            lines.append(f"  {t['self_score']:.4f}  {t['synset']:28s} {t['definition'][:70]}")
    lines.append(f"\n{len(report.maps)} maps written to {out_dir}/")
    emit(Result(data=report.__dict__, text="\n".join(lines)), "json" if as_json else "table")
