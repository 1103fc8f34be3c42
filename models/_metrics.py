"""Evaluation metrics (pure numpy): AUROC, confusion rates, warning lead times."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["auroc", "confusion"]


def auroc(labels: NDArray[np.generic], scores: NDArray[np.floating]) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # mid-ranks for ties
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def confusion(labels: NDArray[np.generic], alarms: NDArray[np.bool_]) -> dict[str, float]:
    """Precision, recall and false-alarm rate (false positives over negatives)."""
    y = np.asarray(labels).astype(bool)
    a = np.asarray(alarms).astype(bool)
    tp = int((y & a).sum())
    fp = int((~y & a).sum())
    fn = int((y & ~a).sum())
    tn = int((~y & ~a).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0,
    }
