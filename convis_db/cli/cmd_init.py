"""convis-db init"""

from __future__ import annotations

import click

from convis_db.cli.context import App, device_option, model_options, pass_app, precision_option
from convis_db.cli.output import Result, emit
from convis_db.models.device import resolve_device
from convis_db.models.precision import resolve_precision
from convis_db.wordnet.hierarchy import HIERARCHY_KINDS


@click.command("init")
@model_options()
@device_option
@precision_option
@click.option("--vocab", default="physical-objects", show_default=True,
              help="physical-objects (the paper's 1980 words), all-nouns (every noun synset), or a word file.")
@click.option("--hierarchy", type=click.Choice(HIERARCHY_KINDS), default=None,
              help="How T is built. reference (default for a new database): the authors' T, raw WordNet lookups "
                   "and hypernym links only (7,080 synsets for physical-objects), so scores compare with the paper; "
                   "extended: normalised words and instance hypernyms too (7,343; people and places included). "
                   "An existing database keeps its own.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 65536),
              help="Definitions per text-encoder batch.")
@click.option("--embeddings", type=click.Choice(["float32", "float16", "none"]), default=None,
              help="How window embeddings are stored [float32 for a new database]: float32 (maps from stored data "
                   "equal the stored scores), float16 (half the bytes), none (no embeddings: maps of stored images "
                   "are recomputed with the model from the image file). Scores and top-K are exact in all three.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def command(app: App, model: str, pretrained: str, device: str, precision: str, vocab: str, hierarchy: str | None,
            batch_size: int, embeddings: str | None,
            as_json: bool) -> None:
    """Build the WordNet hierarchy T and embed every definition with a CLIP model.

    Running it again with another model adds that model's embeddings; with the same arguments it
    changes nothing.

    \b
    Example:
      convis-db --db x.duckdb init --model ViT-B-32 --pretrained openai
      convis-db --db x.duckdb init --model tests/data/tiny-clip.json --pretrained none --vocab words.txt
      convis-db --db x.duckdb init --model ViT-B-32 --pretrained openai --hierarchy extended
    """
    from convis_db.api import create

    dev = resolve_device(device)
    with create(app.db, model=model, pretrained=pretrained, vocab=vocab, hierarchy=hierarchy, device=dev,
                precision=resolve_precision(precision, dev), embeddings=embeddings, batch_size=batch_size,
                progress=app.progress) as db:
        report = db.init_report
    row = dict(report.__dict__)
    notes = []
    if report.missing_words:
        notes.append(f"{len(report.missing_words)} vocabulary words have no WordNet noun sense in T: "
                     + ", ".join(report.missing_words)
                     + (" (--hierarchy extended normalises spellings such as 'hot dog' and finds more of them)"
                        if report.hierarchy == "reference" else ""))
    if not report.embedded_definitions and report.definition_precision != report.precision:
        stored = ("their precision was not recorded (written before schema 007)" if report.definition_precision
                  == "unrecorded" else f"they were embedded in {report.definition_precision}")
        notes.append(f"the stored definitions are kept ({stored}); --precision {report.precision} applies to new "
                     "embeddings (another --db to re-embed).")
    if report.is_random:
        notes.append("random weights: every score in this database is meaningless (smoke runs only).")
    text = (f"{report.db}: vocabulary {report.vocabulary}, hierarchy {report.hierarchy}, {report.n_synsets} synsets, {report.n_edges} is-a edges, "
            f"{report.n_closure_pairs} closure pairs; model {report.model} (id {report.model_id}), "
            f"{report.embedded_definitions} definitions embedded now; definitions in {report.definition_precision}; "
            f"window embeddings stored as {report.embeddings}.")
    emit(Result(rows=[row], data=row, text=text, notes=notes), "json" if as_json else "table")
