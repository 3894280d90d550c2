"""convis-db eval wsol | ood"""

from __future__ import annotations

import csv
from pathlib import Path

import click

from convis_db.cli.context import App, batch_size_option, device_option, pass_app, precision_option
from convis_db.cli.output import Result, emit
from convis_db.cli.types import FiniteFloatRange
from convis_db.errors import UsageError
from convis_db.models.device import resolve_device
from convis_db.models.precision import check_fp32_method, resolve_precision


@click.group("eval")
def command() -> None:
    """Reproduce the paper's experiments: localisation (MaxBoxAcc) and OOD detection (AUROC).

    Maps are computed with the database's model (images already ingested reuse their stored
    windows). With random weights every number is meaningless. See docs/evaluation.md.
    """



@command.command("wsol")
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--images", "image_dir", type=click.Path(exists=True, file_okay=False),
              help="COCO only: the folder holding the images of the annotation JSON.")
@click.option("--category-map", multiple=True,
              help="COCO only: name=synset (repeatable) or a JSON file {\"dog\": \"dog.n.01\", ...}.")
@click.option("--concept", default="bird.n.01", show_default=True, help="CUB only: the concept to localise.")
@click.option("--split", type=click.Choice(["auto", "test", "train", "all"]), default="auto", show_default=True,
              help="CUB only: auto = the test split when train_test_split.txt exists, else all images.")
@click.option("--n", "n", type=click.IntRange(1, 10**9), default=None, help="Evaluate only the first N images.")
@click.option("--method", type=click.Choice(["convis", "grad-eclip"]), default="convis", show_default=True,
              help="convis: Concept Visualization maps; grad-eclip: Grad-ECLIP maps of the same model.")
@click.option("--only-self", is_flag=True, help="convis: rank_sim of the synset alone instead of max_rank_sim.")
@click.option("--text", default=None,
              help="grad-eclip on CUB: the text to explain (default: the concept's WordNet definition).")
@click.option("--iou-threshold", type=FiniteFloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="A box is correct when its IoU with a ground-truth box reaches this.")
@click.option("--tau-step", type=FiniteFloatRange(0.001, 0.5), default=0.01, show_default=True,
              help="Spacing of the threshold grid tau = 0, step, ..., < 1.")
@device_option
@batch_size_option
@precision_option
@click.option("--json", "as_json", is_flag=True, help="Print the report (every tau) as JSON.")
@pass_app
def wsol(app: App, dataset, image_dir, category_map, concept, split, n, method, only_self, text, iou_threshold,
         tau_step, device, batch_size, precision, as_json) -> None:
    """MaxBoxAcc and MaxBoxAccV2 of a method's maps on a CUB-200-2011 folder or a COCO instances JSON.

    MaxBoxAcc: the largest component's box, IoU >= --iou-threshold, best tau. MaxBoxAccV2 (Choe et
    al.'s recommended metric): the best box over all components, mean over IoU 0.3/0.5/0.7 of each
    threshold's best tau.

    \b
    Example:
      convis-db eval wsol CUB_200_2011/ --n 500
      convis-db eval wsol CUB_200_2011/ --n 500 --method grad-eclip --text "a photo of a bird"
      convis-db eval wsol instances_val2017.json --images val2017/ --category-map dog=dog.n.01 --json
    """
    from convis_db.evaluation.datasets import load_wsol_dataset, parse_category_map
    from convis_db.evaluation.explainers import convis_for_database, grad_eclip_for_database
    from convis_db.evaluation.wsol import evaluate_wsol

    dev = resolve_device(device)
    if method == "grad-eclip":
        check_fp32_method(precision, "Grad-ECLIP")
    precision = resolve_precision(precision, dev)
    if only_self and method != "convis":
        raise UsageError("--only-self is a convis option; drop it with --method grad-eclip.")
    if text is not None and method != "grad-eclip":
        raise UsageError("--text is the text Grad-ECLIP explains; use it with --method grad-eclip.")
    mapping = parse_category_map(category_map) if category_map else None
    data = load_wsol_dataset(dataset, images=image_dir, concept=concept, category_map=mapping, n=n, split=split)
    if text is not None and data.kind != "cub":
        raise UsageError("--text works with one concept (CUB); COCO categories use their synsets' definitions.")
    with app.database(dev, precision) as db:
        explainer = (convis_for_database(db, only_self, batch_size=batch_size) if method == "convis"
                     else grad_eclip_for_database(db, text))
        report = evaluate_wsol(data, explainer, tau_step=tau_step, iou_threshold=iou_threshold, progress=app.progress)
        notes = db.profile.notes()
    payload = report.as_dict()
    if report.failures:
        notes.append(f"{len(report.failures)} images could not be evaluated (listed under 'failures' in --json).")
    v2 = payload["max_box_acc_v2_per_iou"]
    v2_parts = ", ".join(f"{p['iou_threshold']:g}: {p['max_box_acc']:.4f} at tau {p['best_tau']:g}" for p in v2)
    lines = [(f"MaxBoxAcc {report.max_box_acc:.4f} at tau {report.best_tau:g}  ({report.method}; {report.dataset} "
              f"{report.source}; {report.n} samples; IoU >= {report.iou_threshold:g})"),
             f"MaxBoxAccV2 {payload['max_box_acc_v2']:.4f}  (all components; mean over IoU {v2_parts})"]
    if data.kind == "coco":
        for c, row in payload["per_concept"].items():
            lines.append(f"  {c}: {row['n']} samples, BoxAcc {row['box_acc_at_best_tau']:.4f} at tau "
                         f"{report.best_tau:g}; own MaxBoxAcc {row['max_box_acc']:.4f} at tau {row['best_tau']:g}; "
                         f"MaxBoxAccV2 {row['max_box_acc_v2']:.4f}")
    lines.append("")
    v2_keys = [k for k in payload["per_tau"][0] if k.startswith("v2_")]
    lines.append("tau    box_acc  " + "  ".join(f"{'v2@' + k.rsplit('iou', 1)[1]:<6s}" for k in v2_keys))
    decimals = 2 if round(tau_step, 2) == tau_step else 3
    lines.extend(f"{r['tau']:<6.{decimals}f} {r['box_acc']:.4f}   " + "  ".join(f"{r[k]:.4f}" for k in v2_keys)
                 + ("  <- best" if i == report.best_index else "")
                 for i, r in enumerate(payload["per_tau"]))
    emit(Result(rows=payload["per_tau"], data=payload, text="\n".join(lines), notes=notes),
         "json" if as_json else "table")


@command.command("ood")
@click.option("--train", "train_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="ImageNet-layout folder (n######## subfolders); its in-distribution classes are the reference.")
@click.option("--test", "test_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="ImageNet-layout folder of test images.")
@click.option("--positive", required=True, help="In-distribution concept: classes that are it or under it.")
@click.option("--negative", default=None,
              help="Out-of-distribution concept: classes under it (default: every class not under --positive).")
@click.option("--per-class", type=click.IntRange(1, 10**9), default=None, help="Use only the first N images of each class.")
@click.option("--scores", "scores_csv", type=click.Path(dir_okay=False),
              help="Write every test image's scores (every column) to this CSV.")
@click.option("--prompt", "prompts", multiple=True, metavar="TEMPLATE",
              help="MLS zero-shot prompt with {} for the class name (repeatable: prompts are averaged per class). "
                   "Default: 'a photo of a {}.'.")
@click.option("--no-maps", is_flag=True,
              help="Skip the map-peak columns (map_max_rank_sim, map_rank_sim): one encoder pass per image "
                   "instead of one per window.")
@click.option("--seed", type=int, default=0, show_default=True, help="random_state of the IsolationForest and of the linear probe.")
@device_option
@batch_size_option
@precision_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def ood(app: App, train_dir, test_dir, positive, negative, per_class, scores_csv, prompts, no_maps, seed, device,
        batch_size, precision, as_json) -> None:
    """AUROC of in-distribution vs out-of-distribution test images: every column of the paper's Table I.

    \b
    Table I (whole-image CLIP embedding x = E_I(x) of each test image):
      max_rank_sim      max rank_sim of x over the positive concept and its descendants in T
      rank_sim          rank_sim of x for the positive synset alone
      mls               maximum zero-shot logit over the in-distribution classes (--prompt)
      isolation_forest  IsolationForest fit on the in-distribution training images' embeddings
    Extra: clip_image_baseline (max cosine to a training image), mls_linear_probe (max logit of a
    logistic regression on the training images, with two or more in-distribution classes) and the
    peaks of the ConVis saliency maps (map_max_rank_sim, map_rank_sim; --no-maps skips them).

    \b
    Example:
      convis-db eval ood --train imagenet/train --test imagenet/val --positive bird.n.01 \\
          --negative hunting_dog.n.01 --per-class 50
    """
    from convis_db.evaluation.datasets import imagenet_classes
    from convis_db.evaluation.explainers import convis_for_database
    from convis_db.evaluation.ood import WordNetLabeller, evaluate_ood

    train, ignored_train = imagenet_classes(train_dir, per_class)
    test, ignored_test = imagenet_classes(test_dir, per_class)
    dev = resolve_device(device)
    with app.database(dev, resolve_precision(precision, dev)) as db:
        labeller = WordNetLabeller(db, positive, negative)
        explainer = convis_for_database(db, batch_size=batch_size)
        explainer.prepare([positive])
        report = evaluate_ood(explainer, positive, train, test, labeller, negative=negative,
                              ignored_folders=[f"train/{d}" for d in ignored_train]
                              + [f"test/{d}" for d in ignored_test],
                              progress=app.progress, prompts=prompts, map_scores=not no_maps, seed=seed)
        notes = db.profile.notes()
    payload = report.as_dict()
    if scores_csv:
        Path(scores_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(scores_csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "wnid", "label", *payload["auroc"]])
            for item in report.items:
                values = (f"{item.scores[k]:.6f}" for k in payload["auroc"])
                writer.writerow([item.path, item.wnid, item.label, *values])
    ignored_classes = [c for c in report.classes if c["label"] == "ignored"]
    if ignored_classes:
        notes.append(f"{len(ignored_classes)} class folders are under neither concept and were ignored: "
                     + ", ".join(f"{c['wnid']} ({c['synset'] or 'not a WordNet noun'})" for c in ignored_classes[:10])
                     + (" ..." if len(ignored_classes) > 10 else ""))
    if report.failures:
        notes.append(f"{len(report.failures)} images could not be read (listed under 'failures' in --json).")
    protocol = payload["protocol"]
    lines = [f"OOD: in = {positive}" + (f", out = {negative}" if negative else ", out = every other class")
             + f"; {payload['n_train']} reference images, {payload['n_test_in']} ID and {payload['n_test_out']} "
             "OOD test images",
             f"MLS over {len(protocol['mls_classes'])} in-distribution classes, prompts: "
             + ", ".join(repr(p) for p in protocol["prompts"]),
             "", f"  {'score':<20s} {'auroc':<6s}  {'mean_in':>10s}  {'mean_out':>10s}"]
    table_i = [r for r in payload["scores"] if r["table_i"]]
    extra = [r for r in payload["scores"] if not r["table_i"]]
    for heading, rows in (("Table I", table_i), ("extra columns", extra)):
        lines.append(heading)
        lines.extend(f"  {r['score']:<20s} {r['auroc']:.4f}  {r['mean_in']:10.4f}  {r['mean_out']:10.4f}" for r in rows)
    emit(Result(rows=payload["scores"], data=payload, text="\n".join(lines), notes=notes),
         "json" if as_json else "table")


# Mutual knowledge (Sammani & Deligiannis): the command lives with the method's other CLI code.
from convis_db.cli.cmd_mutual import eval_command as _mutual_eval  # noqa: E402

command.add_command(_mutual_eval)
