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

MaxBoxAccV2 (the same paper, the benchmark's recommended metric) changes two things: at each tau the
estimate is the best match over the boxes of *all* connected components of the mask (not only the
largest), and the accuracy is averaged over IoU thresholds 0.3, 0.5 and 0.7, each threshold taking
its own best tau: MaxBoxAccV2 = mean over delta of max over tau of BoxAcc(tau, delta).
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
from convis_db.evaluation.metrics import (
    MAXBOXACC_V2_IOU_THRESHOLDS,
    box_accuracy,
    iou_curve,
    iou_curve_all_components,
    max_box_acc_v2,
    thresholds,
)
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
    ious_all: np.ndarray | None = None   # (n_samples, n_taus) best IoU over all components' boxes (V2)
    v2_iou_thresholds: tuple[float, ...] = MAXBOXACC_V2_IOU_THRESHOLDS

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

    def v2(self, rows: np.ndarray | None = None) -> dict:
        """MaxBoxAccV2 and, per IoU threshold, its best BoxAcc and tau (over `rows` of ious_all)."""
        out = max_box_acc_v2(self.ious_all if rows is None else rows, self.v2_iou_thresholds)
        for p in out["per_iou"]:
            p["best_tau"] = float(self.taus[p.pop("best_index")])
        return out

    @property
    def max_box_acc_v2(self) -> float:
        return self.v2()["max_box_acc_v2"]

    def per_concept(self) -> dict[str, dict]:
        """Per concept: samples, BoxAcc at the overall best tau, its own MaxBoxAcc and tau, MaxBoxAccV2."""
        out = {}
        concepts = np.array(self.concepts)
        for c in sorted(set(self.concepts)):
            acc = box_accuracy(self.ious[concepts == c], self.iou_threshold)
            best = int(np.argmax(acc))
            out[c] = {"n": int((concepts == c).sum()), "box_acc_at_best_tau": float(acc[self.best_index]),
                      "max_box_acc": float(acc[best]), "best_tau": float(self.taus[best]),
                      "max_box_acc_v2": self.v2(self.ious_all[concepts == c])["max_box_acc_v2"]}
        return out

    def as_dict(self) -> dict:
        v2 = self.v2()
        per_delta = [box_accuracy(self.ious_all, d) for d in self.v2_iou_thresholds]
        per_tau = []
        for i, (t, a) in enumerate(zip(self.taus, self.accuracy)):
            row = {"tau": float(t), "box_acc": float(a)}
            for d, acc in zip(self.v2_iou_thresholds, per_delta):
                row[f"v2_box_acc_iou{round(d * 100)}"] = float(acc[i])
            per_tau.append(row)
        return {
            "dataset": self.dataset, "source": self.source, "method": self.method, "n": self.n,
            "iou_threshold": self.iou_threshold, "max_box_acc": self.max_box_acc, "best_tau": self.best_tau,
            "max_box_acc_v2": v2["max_box_acc_v2"], "max_box_acc_v2_per_iou": v2["per_iou"],
            "per_tau": per_tau, "per_concept": self.per_concept(), "failures": self.failures, **self.info,
        }


def _check_size(sample: WsolSample, width: int, height: int) -> None:
    if sample.width and sample.height and (sample.width, sample.height) != (width, height):
        raise ConvisError(f"decoded size {width}x{height} differs from the annotated {sample.width}x{sample.height}; "
                          "the boxes would not match (EXIF rotation?).")


def evaluate_wsol(dataset: WsolDataset, explainer: Explainer, *, tau_step: float = 0.01, iou_threshold: float = 0.5,
                  progress: Progress = no_progress) -> WsolReport:
    """MaxBoxAcc and MaxBoxAccV2 of `explainer` on every sample of `dataset`. Images that cannot be
    read are listed in `failures` and left out of the accuracy."""
    taus = thresholds(tau_step)
    explainer.prepare(dataset.concepts)
    rows, rows_all, keys, concepts, failures = [], [], [], [], []
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
            rows_all.append(iou_curve_all_components(full, sample.boxes, taus))
            keys.append(sample.key)
            concepts.append(sample.concept)
            tick(1)
    if not rows:
        raise UsageError(f"no image of {dataset.source} could be evaluated ({len(failures)} failed); the first "
                         f"failure: {failures[0]['path']}: {failures[0]['reason']}" if failures else
                         f"{dataset.source} has no samples.")
    ious = np.array(rows, dtype=np.float64).reshape(len(rows), len(taus))
    ious_all = np.array(rows_all, dtype=np.float64).reshape(len(rows), len(taus))
    accuracy = box_accuracy(ious, iou_threshold)
    return WsolReport(dataset.kind, dataset.source, explainer.description, taus, accuracy, ious, keys, concepts,
                      iou_threshold, failures, dict(dataset.info), ious_all)
