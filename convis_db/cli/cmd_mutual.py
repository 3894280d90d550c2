"""convis-db mutual"""

from __future__ import annotations

from pathlib import Path

import click

from convis_db.cli.context import App, device_option, pass_app
from convis_db.cli.output import Result, query_output
from convis_db.mutual.settings import AUC_MODES, DECOMPOSITIONS, DEFAULT_TEMPLATE, MutualSettings

_DEFAULTS = MutualSettings()


class _NumberOr(click.ParamType):
    """A number in [low, high), or a keyword meaning None (e.g. "sign", "off")."""

    def __init__(self, keyword: str, low: float, high: float | None):
        self.keyword, self.low, self.high = keyword, low, high
        self.name = f"{keyword}|number"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip().lower() == self.keyword):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither {self.keyword!r} nor a number.", param, ctx)
        if not (number >= self.low and (self.high is None or number < self.high)):
            bound = f"[{self.low}, {self.high})" if self.high is not None else f">= {self.low}"
            self.fail(f"{value!r} is not in {bound} (or give {self.keyword!r}).", param, ctx)
        return number


def method_options(f):
    """The method's options, shared by `mutual` and `eval mutual`."""
    opts = [
        click.option("--labels", default=None, help="The zero-shot classes, comma-separated: \"cat,dog,car\"."),
        click.option("--labels-file", type=click.Path(dir_okay=False), default=None,
                     help="The classes from a file: one per line, a JSON list, or a JSON object whose keys are "
                          "the classes (the authors' descriptor file works); UTF-8, at most 25,000 labels."),
        click.option("--template", "templates", multiple=True, default=[DEFAULT_TEMPLATE], show_default=True,
                     help="Prompt template with {} for the class (repeatable: the embeddings are averaged)."),
        click.option("--descriptors", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="Concept bank: a JSON descriptor file {class: [descriptor, ...]}, embedded once per "
                          "model and stored (default: the definitions of T)."),
        click.option("--decomposition", type=click.Choice(DECOMPOSITIONS), default="pca", show_default=True,
                     help="How patch tokens become visual concepts: eigendecomposition (PCA) or k-means."),
        click.option("--concepts", "n_concepts", type=click.IntRange(1, 32), default=5, show_default=True,
                     help="Visual concepts (K) per image."),
        click.option("--topk", type=click.IntRange(1, 50), default=3, show_default=True,
                     help="Textual concepts per visual concept."),
        click.option("--initial-topk", type=click.IntRange(1, 100_000), default=_DEFAULTS.initial_topk,
                     show_default=True,
                     help="Candidate texts kept per visual concept before the concepts' candidates are intersected "
                          "(the authors' notebook: 500)."),
        click.option("--language-topk", type=click.IntRange(1, 100_000), default=_DEFAULTS.language_topk,
                     show_default=True,
                     help="Textual concepts around the predicted class (the language encoder's side; notebook: 50)."),
        click.option("--foreground-method", type=click.Choice(["graph", "pca"]), default="graph", show_default=True,
                     help="How the foreground is found: graph decomposition (token affinity eigenvectors) or PCA."),
        click.option("--foreground-threshold", type=_NumberOr("sign", 0.0, 1.0), default="sign", show_default=True,
                     help="Foreground patches: 'sign' where the foreground component is positive (the notebook), or "
                          "a level in [0, 1) of the min-max scaled component (e.g. 0.5)."),
        click.option("--relevance-offset", type=_NumberOr("off", 0.0, None), default=str(_DEFAULTS.relevance_offset),
                     show_default=True,
                     help="Keep the shared candidates whose cosine to the image exceeds their mean minus this "
                          "(the notebook: 0.02); 'off' keeps them all."),
        click.option("--auc", "auc_mode", type=click.Choice(AUC_MODES), default="single", show_default=True,
                     help="single: the AUC of this decomposition's MI curve; pca+kmeans: of the mean of the PCA and "
                          "k-means curves (the notebook's single-image AUC; decomposes twice)."),
        click.option("--no-foreground", is_flag=True, help="Decompose every patch, not only the foreground."),
        click.option("--no-ot", is_flag=True, help="Plain top-k texts per concept instead of the Sinkhorn assignment."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def settings_from(decomposition, n_concepts, topk, language_topk, foreground_method, no_foreground, no_ot,
                  initial_topk=_DEFAULTS.initial_topk, foreground_threshold=_DEFAULTS.foreground_threshold,
                  relevance_offset=_DEFAULTS.relevance_offset, auc_mode=_DEFAULTS.auc):
    return MutualSettings(decomposition=decomposition, n_concepts=n_concepts, topk=topk, language_topk=language_topk,
                          foreground=not no_foreground, foreground_method=foreground_method,
                          optimal_transport=not no_ot, initial_topk=initial_topk,
                          foreground_threshold=foreground_threshold, relevance_offset=relevance_offset, auc=auc_mode)


def needs_writer(app: App, store: bool, descriptors: str | None) -> bool:
    """Whether the command must open the file for writing: to store explanations, or a descriptor
    bank not yet embedded with the database's model (a stored one is read read-only)."""
    if store:
        return True
    if descriptors is None:
        return False
    with app.database() as db:
        return not db.has_descriptor_bank(descriptors)


@click.command("mutual")
@click.argument("image")
@method_options
@click.option("--faithfulness", is_flag=True, help="Also compute the Deletion/Insertion curves of the visual concepts.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Draw the concept regions and their texts to a PNG.")
@click.option("--store", is_flag=True, help="Store the explanation in the mutual_* tables (opens the file for writing).")
@device_option
@query_output
@pass_app
def command(app: App, image, labels, labels_file, templates, descriptors, decomposition, n_concepts, topk,
            initial_topk, language_topk, foreground_method, foreground_threshold, relevance_offset, auc_mode,
            no_foreground, no_ot, faithfulness, output, store, device) -> Result:
    """Why CLIP gives IMAGE its zero-shot class: the concepts its vision and language encoders share.

    IMAGE is a file, or a stored image (id, path or sha256). The visual concepts are regions of the
    image with the texts that describe them; the language concepts are the texts around the predicted
    class; the mutual concepts are in both. See docs/mutual.md.

    \b
    Example:
      convis-db mutual cat.jpg --labels "cat,dog,car" -o regions.png
      convis-db mutual 12 --labels-file classes.txt --descriptors descriptors_imagenet.json --json
      convis-db mutual cat.jpg --labels "cat,dog" --store     # then: SELECT * FROM mutual_concepts
    """
    from convis_db.engine.images import read_image
    from convis_db.models.device import resolve_device
    from convis_db.mutual.render import save_concepts_png
    from convis_db.mutual.zeroshot import parse_labels, read_labels_file

    classes = read_labels_file(labels_file)[0] if labels_file and labels is None else parse_labels(labels, labels_file)
    settings = settings_from(decomposition, n_concepts, topk, language_topk, foreground_method, no_foreground, no_ot,
                             initial_topk, foreground_threshold, relevance_offset, auc_mode)
    with app.database(resolve_device(device), write=needs_writer(app, store, descriptors)) as db:
        path = db.image_file(image)  # a stored image (id, path or sha256: its file is read again) or a file
        explainer = db.mutual_explainer(classes, templates=templates, settings=settings, descriptors=descriptors,
                                        progress=app.progress)
        decoded = read_image(path)
        exp = explainer.explain(decoded.pixels, str(Path(path).absolute()), faithfulness, decoded.sha256)
        data = exp.as_dict()
        if store:
            data["explanation_id"] = db.store_mutual(exp, explainer)
        notes = db.profile.notes() + list(exp.notes)
    if output:
        save_concepts_png(output, decoded.pixels, exp)
        data["output"] = output
    rows = [{"side": "vision", "concept": v.index + 1, "rank": r, "text": t.text, "name": t.name, "score": t.score}
            for v in exp.visual_concepts for r, t in enumerate(v.texts, 1)]
    rows += [{"side": "language", "concept": None, "rank": r, "text": t.text, "name": t.name, "score": t.score}
             for r, t in enumerate(exp.language_concepts, 1)]
    rows += [{"side": "mutual", "concept": None, "rank": r, "text": t.text, "name": t.name, "score": t.score}
             for r, t in enumerate(exp.mutual_concepts, 1)]
    title = (f"{exp.image_path}: predicted {exp.predicted!r} (cosine {exp.class_cosines[exp.predicted_index]:.4f}); "
             f"{len(exp.visual_concepts)} visual concepts ({decomposition}), {len(exp.mutual_concepts)} mutual; "
             f"MI {exp.mi:.4f}, AUC {exp.auc:.4f}")
    if exp.faithfulness is not None:
        m = exp.faithfulness.metrics()
        title += (f"; deletion {m['deletion']:.4f}, insertion {m['insertion']:.4f}, acc_drop {m['acc_drop']:.4f}, "
                  f"acc_inc {m['acc_inc']:.4f}")
    if output:
        notes.append(f"wrote {output}")
    return Result(rows=rows, columns=["side", "concept", "rank", "score", "name", "text"], title=title, notes=notes,
                  data=data, wide_columns=("text", "name"))


@click.command("mutual")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@method_options
@click.option("--per-class", type=click.IntRange(1), default=None, help="Use only the first N images of each class.")
@click.option("--n", "n", type=click.IntRange(1), default=None, help="Evaluate only the first N images.")
@click.option("--no-faithfulness", is_flag=True, help="Skip Deletion/Insertion/AccDrop/AccInc (MI only, faster).")
@click.option("--together", is_flag=True,
              help="Decompose the images of each class folder together (one PCA / k-means, the authors' setting).")
@click.option("--store", is_flag=True, help="Store every explanation in the mutual_* tables.")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the report (with per-image rows) as JSON.")
@pass_app
def eval_command(app: App, dataset, labels, labels_file, templates, descriptors, decomposition, n_concepts, topk,
                 initial_topk, language_topk, foreground_method, foreground_threshold, relevance_offset, auc_mode,
                 no_foreground, no_ot, per_class, n, no_faithfulness, together, store, device, as_json) -> None:
    """Dataset-level mutual knowledge: MI, the MI-dynamics curve and its AUC, Deletion, Insertion, AccDrop, AccInc.

    DATASET is a folder with one subfolder per class (named as the labels, or mapped to them by a JSON
    labels file {"folder": "label"}), or a folder of images. See docs/mutual.md.

    \b
    Example:
      convis-db eval mutual imagenet/val --labels-file wnid_to_name.json --descriptors descriptors.json --per-class 10
      convis-db eval mutual shapes/ --labels "red,green,blue" --decomposition kmeans --json
    """
    from convis_db.cli.output import emit
    from convis_db.errors import UsageError
    from convis_db.models.device import resolve_device
    from convis_db.evaluation.mutual import evaluate_mutual, labelled_images
    from convis_db.mutual.zeroshot import parse_labels, read_labels_file

    if (labels is None) == (labels_file is None):
        raise UsageError("give the zero-shot classes with --labels \"a,b,c\" or --labels-file FILE (one of them).")
    classes, folder_map = read_labels_file(labels_file) if labels_file else (parse_labels(labels, None), {})
    items, ignored = labelled_images(dataset, classes, folder_map, per_class, n)
    settings = settings_from(decomposition, n_concepts, topk, language_topk, foreground_method, no_foreground, no_ot,
                             initial_topk, foreground_threshold, relevance_offset, auc_mode)
    with app.database(resolve_device(device), write=needs_writer(app, store, descriptors)) as db:
        explainer = db.mutual_explainer(classes, templates=templates, settings=settings, descriptors=descriptors,
                                        progress=app.progress)
        hook = (lambda exp: db.store_mutual(exp, explainer)) if store else None
        report = evaluate_mutual(explainer, items, str(dataset), not no_faithfulness, app.progress, hook, together)
        notes = db.profile.notes() + list(explainer.notes)
    report.ignored_folders = ignored
    payload = report.as_dict()
    payload["together"] = together
    s = report.summary()
    if ignored:
        notes.append(f"{len(ignored)} subfolders match no label and were ignored: {', '.join(ignored[:10])}")
    if report.failures:
        notes.append(f"{len(report.failures)} images could not be read (listed under 'failures' in --json).")

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"mutual knowledge on {dataset}: {s['n_images']} images ({s['n_labelled']} labelled), "
             f"{len(classes)} labels, {decomposition}, bank: {report.bank}",
             f"zero-shot accuracy  {fmt(s['zero_shot_accuracy'])}",
             f"MI                  {fmt(s['mi'])}",
             f"AUC (MI dynamics)   {fmt(s['auc'])}",
             f"mutual concepts     {fmt(s['n_mutual_mean'])} per image"]
    if not no_faithfulness:
        lines += [f"Deletion            {fmt(s['deletion'])}   (lower is better)",
                  f"Insertion           {fmt(s['insertion'])}   (higher is better)",
                  f"AccDrop             {fmt(s['acc_drop'])}   (lower is better)",
                  f"AccInc              {fmt(s['acc_inc'])}   (higher is better)"]
    lines += ["", "MI curve (concepts removed -> MI): "
              + ", ".join(f"{i}: {v:.3f}" for i, v in enumerate(s["mi_curve"]))]
    emit(Result(rows=report.images, data=payload, text="\n".join(lines), notes=notes),
         "json" if as_json else "table")
