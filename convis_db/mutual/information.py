"""Mutual information between the two encoders' textual concepts, and its dynamics.

The authors' estimate (their released code, which we follow): X is the list of N vision-side texts
(ranked by relevance to the image), Y the list of M language-side texts. A table C (N x M) holds 1
where X_i and Y_j are the same text, normalised to sum 1, and

    MI(X, Y) = log N + log M + H(C),   H(C) = -sum C log(C + 1e-9),

and 0 when no text is shared. With c distinct shared texts that is log(N * M * c) (up to the 1e-9):
it grows with the number of mutual concepts. (The textbook plug-in estimate, log N + log M - H(C),
would *fall* as more texts are shared; docs/mutual.md says more.)

MI dynamics: the vision-side texts are removed one at a time, most relevant first (replaced by a text
in no list), and MI is computed after each removal: a curve of N + 1 values from MI(X, Y) down to 0.
Its area (AUC) is the mean of those values: a curve that falls slowly, a high AUC, means knowledge
that is shared by many concepts rather than a few. Over a dataset, curves are padded with zeros to the
longest and averaged, and the AUC is that mean curve's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPS = 1e-9
_REMOVED = object()


def mutual_information(x: Sequence, y: Sequence) -> float:
    """The authors' MI estimate between two lists of hashable concept ids (0 when nothing is shared)."""
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return 0.0
    y_counts: dict = {}
    for v in y:
        y_counts[v] = y_counts.get(v, 0) + 1
    # cells equal to 1, one per (i, j) with x_i == y_j
    cells = sum(y_counts.get(v, 0) for v in x if v is not _REMOVED)
    if cells == 0:
        return 0.0
    p = 1.0 / cells
    joint_entropy = -cells * p * math.log(p + EPS)
    return math.log(n) + math.log(m) + joint_entropy


def mi_dynamics(x: Sequence, y: Sequence) -> list[float]:
    """MI after removing 0, 1, ..., N vision-side concepts, in the order given (most relevant first)."""
    current = list(x)
    curve = [mutual_information(current, y)]
    for i in range(len(current)):
        current[i] = _REMOVED
        curve.append(mutual_information(current, y))
    return curve


def area_under(curve: Sequence[float]) -> float:
    """The authors' AUC: the mean of the curve's values (0 for an empty curve)."""
    return float(sum(curve) / len(curve)) if len(curve) else 0.0


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """Curves padded with zeros to the longest, averaged point by point."""
    if not curves:
        return []
    width = max(len(c) for c in curves)
    padded = np.zeros((len(curves), width))
    for i, c in enumerate(curves):
        padded[i, : len(c)] = c
    return padded.mean(axis=0).tolist()
