"""Weakly supervised object localisation: MaxBoxAcc (Choe et al., "Evaluating Weakly Supervised Object
Localization Methods Right", CVPR 2020), the metric of the paper's Table II.

Per sample (an image and the concept to localise):
1. the explainer's map is resized (bilinear) to the original image size, where the boxes live;
2. it is min-max normalised to [0, 1];
3. for each tau on the grid (0, 0.01, ..., 0.99) the mask {map >= tau} is split into 8-connected
   components and the bounding box of the largest one (most pixels) is the estimate (none for an
   empty mask);
4. the estimate is correct when its IoU with any ground-truth box of the concept is >= 0.5.
BoxAcc(tau) is the fraction of samples correct at tau; MaxBoxAcc is its maximum over tau, reported
with the best tau (the smallest one on ties).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from convis_db.engine.images import read_image
from convis_db.engine.render import resize_map
from convis_db.errors import ConvisError, UsageError
from convis_db.evaluation.datasets import WsolDataset, WsolSample
from convis_db.evaluation.explainers import Explainer
from convis_db.evaluation.metrics import box_accuracy, iou_curve, thresholds
from convis_db.progress import Progress, no_progress

log = logging.getLogger(__name__)


@dataclass
class WsolReport:
    dataset: str
    source: str
    method: str
    taus: np.ndarray
    accuracy: np.ndarray              # (n_taus,) BoxAcc per tau
    ious: np.ndarray                  # (n_samples, n_taus) best IoU per sample and tau
    keys: list[str]                   # sample keys, rows of `ious`
    concepts: list[str]               # concept of each row
    iou_threshold: float = 0.5
    failures: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.accuracy))   # first maximum: the smallest best tau

    @property
    def best_tau(self) -> float:
        return float(self.taus[self.best_index])

    @property
    def max_box_acc(self) -> float:
        return float(self.accuracy[self.best_index])

    def per_concept(self) -> dict[str, dict]:
        """Per concept: samples, BoxAcc at the overall best tau, and its own MaxBoxAcc and tau."""
        out = {}
        concepts = np.array(self.concepts)
        for c in sorted(set(self.concepts)):
            acc = box_accuracy(self.ious[concepts == c], self.iou_threshold)
            best = int(np.argmax(acc))
            out[c] = {"n": int((concepts == c).sum()), "box_acc_at_best_tau": float(acc[self.best_index]),
                      "max_box_acc": float(acc[best]), "best_tau": float(self.taus[best])}
        return out

    def as_dict(self) -> dict:
        return {
            "dataset": self.dataset, "source": self.source, "method": self.method, "n": self.n,
            "iou_threshold": self.iou_threshold, "max_box_acc": self.max_box_acc, "best_tau": self.best_tau,
            "per_tau": [{"tau": float(t), "box_acc": float(a)} for t, a in zip(self.taus, self.accuracy)],
            "per_concept": self.per_concept(), "failures": self.failures, **self.info,
        }


def _check_size(sample: WsolSample, width: int, height: int) -> None:
    if sample.width and sample.height and (sample.width, sample.height) != (width, height):
        raise ConvisError(f"decoded size {width}x{height} differs from the annotated {sample.width}x{sample.height}; "
                          "the boxes would not match (EXIF rotation?).")


def evaluate_wsol(dataset: WsolDataset, explainer: Explainer, *, tau_step: float = 0.01, iou_threshold: float = 0.5,
                  progress: Progress = no_progress) -> WsolReport:
    """MaxBoxAcc of `explainer` on every sample of `dataset`. Images that cannot be read are listed in
    `failures` and left out of the accuracy."""
    taus = thresholds(tau_step)
    explainer.prepare(dataset.concepts)
    rows, keys, concepts, failures = [], [], [], []
    decoded = None
    with progress(f"WSOL {explainer.name}", len(dataset.samples), "img") as tick:
        for sample in dataset.samples:
            try:
                if decoded is None or decoded.path != str(sample.image_path):
                    decoded = read_image(sample.image_path)
                _check_size(sample, decoded.width, decoded.height)
                saliency = explainer.saliency(decoded, sample.concept)
            except ConvisError as exc:
                log.warning("skipped %s: %s", sample.image_path, exc)
                failures.append({"key": sample.key, "path": str(sample.image_path), "reason": str(exc)})
                tick(1)
                continue
            full = resize_map(np.asarray(saliency, dtype=np.float32), decoded.width, decoded.height)
            rows.append(iou_curve(full, sample.boxes, taus))
            keys.append(sample.key)
            concepts.append(sample.concept)
            tick(1)
    if not rows:
        raise UsageError(f"no image of {dataset.source} could be evaluated ({len(failures)} failed); the first "
                         f"failure: {failures[0]['path']}: {failures[0]['reason']}" if failures else
                         f"{dataset.source} has no samples.")
    ious = np.array(rows, dtype=np.float64).reshape(len(rows), len(taus))
    accuracy = box_accuracy(ious, iou_threshold)
    return WsolReport(dataset.kind, dataset.source, explainer.description, taus, accuracy, ious, keys, concepts,
                      iou_threshold, failures, dict(dataset.info))
