"""Metrics: AUROC by ranks, and the box accuracy of thresholded saliency maps (MaxBoxAcc, MaxBoxAccV2).

Boxes are half-open pixel rectangles (x0, y0, x1, y1): a box covers the columns x0..x1-1 and the
rows y0..y1-1, so a CUB/COCO box "x y w h" is (x, y, x + w, y + h) and a box around pixels
c0..c1 is (c0, ., c1 + 1, .). Areas and IoUs are those of the continuous rectangles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from convis_db.errors import UsageError

#: Choe et al.'s threshold grid: tau = 0.00, 0.01, ..., 0.99 over the min-max normalised map.
DEFAULT_TAU_STEP = 0.01
#: MaxBoxAccV2's IoU thresholds (Choe et al., CVPR 2020, section 4.1): the mean over these.
MAXBOXACC_V2_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
#: 8-connectivity, as contour tracing sees components.
_EIGHT = np.ones((3, 3), dtype=bool)


# ------------------------------------------------------------------------------------ AUROC
def auroc(positive: Sequence[float] | np.ndarray, negative: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of scores where `positive` should score higher than `negative`.

    The Mann-Whitney statistic U / (n_pos * n_neg): the fraction of (positive, negative) pairs that are
    ordered correctly, a tie counting one half. Computed from scipy's average ranks in O(n log n).
    """
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise UsageError(f"AUROC needs scores of both groups; got {len(pos)} in-distribution and {len(neg)} "
                         "out-of-distribution images. Check the folders and the --positive/--negative concepts.")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("AUROC scores must be finite")
    ranks = rankdata(np.concatenate([pos, neg]), method="average")
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


# ------------------------------------------------------------------------------------ boxes
def thresholds(step: float = DEFAULT_TAU_STEP) -> np.ndarray:
    """tau = 0, step, 2 step, ... < 1 (rounded so that 0.29 prints as 0.29)."""
    if not 0 < step <= 0.5:
        raise UsageError(f"--tau-step {step} must be in (0, 0.5].")
    n = int(np.floor(1.0 / step - 1e-9)) + 1
    return np.round(np.arange(n) * step, 6)


def xywh_to_box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    return (float(x), float(y), float(x) + float(w), float(y) + float(h))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def best_iou(box: Sequence[float] | None, gt_boxes: np.ndarray) -> float:
    """The IoU of `box` with the ground-truth box it overlaps most (0 for no box)."""
    if box is None or len(gt_boxes) == 0:
        return 0.0
    return max(box_iou(box, g) for g in np.asarray(gt_boxes, dtype=np.float64))


def pairwise_iou(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """(n, m) IoUs of half-open boxes (n, 4) against (m, 4), as `box_iou` computes them one by one."""
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)[None, :, :]
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def component_boxes(mask: np.ndarray) -> np.ndarray:
    """(k, 4) bounding boxes of every 8-connected component of `mask`, in label (row-major) order."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return np.zeros((0, 4), np.int64)
    return np.array([(c.start, r.start, c.stop, r.stop) for r, c in ndimage.find_objects(labels)], np.int64)


def largest_component_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box of the largest 8-connected component of `mask` (most pixels; the first in
    row-major label order on ties); None for an empty mask."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    rows, cols = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    return (cols.start, rows.start, cols.stop, rows.stop)


def normalise01(saliency: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1]; a constant map becomes all zeros."""
    s = np.asarray(saliency, dtype=np.float64)
    lo, hi = float(s.min()), float(s.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("saliency map has non-finite values")
    if hi - lo <= 0:
        return np.zeros_like(s)
    return (s - lo) / (hi - lo)


def threshold_boxes(saliency: np.ndarray, taus: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    """For each tau, the box of the largest component of {normalised map >= tau}.

    The mask at tau is a superlevel set, so equal pixel counts mean equal masks: components are
    computed once per distinct mask.
    """
    s = normalise01(saliency)
    if not (s > 0).any():
        # A constant map: the whole image at tau = 0, nothing above it.
        full = (0, 0, s.shape[1], s.shape[0])
        return [full if t <= 0 else None for t in taus]
    flat_sorted = np.sort(s.ravel())
    counts = s.size - np.searchsorted(flat_sorted, taus, side="left")
    cache: dict[int, tuple[int, int, int, int] | None] = {}
    out = []
    for tau, count in zip(taus, counts):
        count = int(count)
        if count not in cache:
            cache[count] = largest_component_box(s >= tau) if count else None
        out.append(cache[count])
    return out


def iou_curve(saliency: np.ndarray, gt_boxes: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """(len(taus),) best IoU with any ground-truth box of the box estimated at each tau.

    `saliency` must already be at the resolution the boxes are given in.
    """
    return np.array([best_iou(b, gt_boxes) for b in threshold_boxes(saliency, taus)], dtype=np.float64)


def iou_curve_all_components(saliency: np.ndarray, gt_boxes: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """(len(taus),) MaxBoxAccV2's per-threshold match: at each tau, the best IoU between the box of
    *any* 8-connected component of {normalised map >= tau} and any ground-truth box (0 for an
    empty mask). `saliency` must already be at the resolution of the boxes."""
    s = normalise01(saliency)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if len(gt) == 0:
        return np.zeros(len(taus), np.float64)
    flat_sorted = np.sort(s.ravel())
    counts = s.size - np.searchsorted(flat_sorted, taus, side="left")   # equal counts, equal masks
    cache: dict[int, float] = {}
    out = np.zeros(len(taus), np.float64)
    for i, (tau, count) in enumerate(zip(taus, counts)):
        count = int(count)
        if count not in cache:
            boxes = component_boxes(s >= tau) if count else np.zeros((0, 4))
            cache[count] = float(pairwise_iou(boxes, gt).max()) if len(boxes) else 0.0
        out[i] = cache[count]
    return out


def max_box_acc_v2(ious_all: np.ndarray, iou_thresholds: Sequence[float] = MAXBOXACC_V2_IOU_THRESHOLDS) -> dict:
    """MaxBoxAccV2 from (n_images, n_taus) all-component IoUs: for each IoU threshold delta, the best
    BoxAcc over tau (each delta picks its own tau), then the mean over delta.

    Returns {"max_box_acc_v2": mean, "per_iou": [{"iou_threshold", "max_box_acc", "best_index"}, ...]}.
    """
    per = []
    for delta in iou_thresholds:
        acc = box_accuracy(ious_all, delta)
        best = int(np.argmax(acc))
        per.append({"iou_threshold": float(delta), "max_box_acc": float(acc[best]), "best_index": best})
    return {"max_box_acc_v2": float(np.mean([p["max_box_acc"] for p in per])), "per_iou": per}


def box_accuracy(ious: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """(n_images, n_taus) IoUs -> (n_taus,) fraction of images localised (IoU >= threshold) per tau."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2 or ious.shape[0] == 0:
        raise UsageError("no image could be evaluated; see the failures listed above.")
    return (ious >= iou_threshold).mean(axis=0)
