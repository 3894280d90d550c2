"""Mutual knowledge's dataset-level evaluation (convis_db.mutual explains each image), as the paper's tables report it.

Over a folder of images (one subfolder per class, or images directly): the zero-shot accuracy when
the folders name the classes; the mean MI of the images; the MI-dynamics curve (per-image curves
padded with zeros and averaged) and its AUC; and the faithfulness of the visual concepts: Deletion,
Insertion, AccDrop and AccInc, each the mean over images of the per-image metric (mutual/faithfulness.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convis_db.errors import ConvisError, UsageError
from convis_db.mutual.explain import MutualExplainer, MutualExplanation
from convis_db.mutual.information import area_under, mean_curve
from convis_db.progress import Progress, no_progress

log = logging.getLogger(__name__)

#: Most images decomposed together in one group (memory: their patch tokens are held at once).
TOGETHER_MAX = 64


@dataclass
class LabelledImage:
    path: Path
    label: int | None        # index into the labels, when its folder names a class


@dataclass
class MutualReport:
    dataset: str
    labels: list[str]
    settings: dict
    bank: str
    templates: list[str]
    images: list[dict] = field(default_factory=list)
    curves: list[list[float]] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    ignored_folders: list[str] = field(default_factory=list)

    def _mean(self, key: str) -> float | None:
        vals = [r[key] for r in self.images if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    def summary(self) -> dict:
        labelled = [r for r in self.images if r["label"] is not None]
        curve = mean_curve(self.curves)
        return {
            "n_images": len(self.images), "n_labelled": len(labelled),
            "zero_shot_accuracy": (float(np.mean([r["label"] == r["predicted"] for r in labelled]))
                                   if labelled else None),
            "mi": self._mean("mi"), "mi_curve": curve, "auc": area_under(curve),
            "auc_mean_per_image": self._mean("auc"), "n_mutual_mean": self._mean("n_mutual"),
            "deletion": self._mean("deletion"), "insertion": self._mean("insertion"),
            "acc_drop": self._mean("acc_drop"), "acc_inc": self._mean("acc_inc"),
        }

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "labels": self.labels, "bank": self.bank, "templates": self.templates,
                "settings": self.settings, **self.summary(), "images": self.images, "failures": self.failures,
                "ignored_folders": self.ignored_folders}


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def labelled_images(root: str | Path, labels: list[str], folder_map: dict[str, str] | None = None,
                    per_class: int | None = None, n: int | None = None) -> tuple[list[LabelledImage], list[str]]:
    """The dataset's images with their label index (None when unlabelled), and ignored folders."""
    from convis_db.evaluation.datasets import image_files

    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder. Pass a folder of images, or one with a subfolder per class.")
    by_name = {_norm(label): i for i, label in enumerate(labels)}
    folder_map = folder_map or {}
    items = [LabelledImage(p, None) for p in image_files(root)]
    ignored: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = folder_map.get(sub.name)
        idx = labels.index(label) if label in labels else by_name.get(_norm(sub.name))
        if idx is None:
            ignored.append(sub.name)
            continue
        files = image_files(sub)
        items += [LabelledImage(p, idx) for p in (files[:per_class] if per_class else files)]
    if n is not None:
        items = items[:n]
    if not items:
        raise UsageError(f"{root} holds no images to evaluate (subfolders must be named by a label, or mapped to one "
                         f"by a JSON labels file; ignored: {', '.join(ignored[:5]) or 'none'}).")
    return items, ignored


def _row(item: LabelledImage, exp: MutualExplanation) -> dict:
    row = {"path": str(item.path), "label": item.label,
           "label_name": exp.labels[item.label] if item.label is not None else None, "predicted": exp.predicted_index,
           "predicted_label": exp.predicted, "n_concepts": len(exp.visual_concepts),
           "n_mutual": len(exp.mutual_concepts), "mi": exp.mi, "auc": exp.auc}
    if exp.faithfulness is not None:
        row.update(exp.faithfulness.metrics())
    return row


def evaluate_mutual(explainer: MutualExplainer, items: list[LabelledImage], dataset: str = "",
                    faithfulness: bool = True, progress: Progress = no_progress,
                    on_explanation=None, together: bool = False) -> MutualReport:
    """Explain every image; a file that cannot be read is recorded in `failures`, not fatal.

    together: the images of each class folder (and the unlabelled ones) are decomposed together, in
    groups of at most TOGETHER_MAX images, as the authors do; else each image alone.
    """
    from convis_db.engine.images import read_image

    report = MutualReport(dataset=dataset, labels=explainer.labels, settings=json.loads(explainer.settings.as_json()),
                          bank=explainer.bank.kind, templates=explainer.templates)
    groups: list[list[LabelledImage]] = []
    if together:
        by_label: dict = {}
        for item in items:
            by_label.setdefault(item.label, []).append(item)
        for members in by_label.values():
            groups += [members[i:i + TOGETHER_MAX] for i in range(0, len(members), TOGETHER_MAX)]
    else:
        groups = [[item] for item in items]
    with progress("mutual knowledge", len(items), "img") as tick:
        for group in groups:
            decoded = []
            for item in group:
                try:
                    d = read_image(item.path)
                    decoded.append((item, (d.pixels, str(item.path.absolute()), d.sha256)))
                except ConvisError as exc:
                    report.failures.append({"path": str(item.path), "error": str(exc)})
                    tick(1)
            if not decoded:
                continue
            exps = explainer.explain_together([d for _, d in decoded], faithfulness=faithfulness)
            for (item, _), exp in zip(decoded, exps):
                report.images.append(_row(item, exp))
                report.curves.append(exp.auc_curve)
                if on_explanation is not None:
                    on_explanation(exp)
                tick(1)
    return report
