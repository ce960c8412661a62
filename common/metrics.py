"""ROC analysis from score histograms, so no per-patient score leaves a site.

Scores are binned on a fixed grid; sites return per-class counts, the server sums
them and computes ROC, AUC and the operating point from the pooled counts.
"""

from __future__ import annotations

import numpy as np

GRID_LOW, GRID_HIGH, GRID_BINS = -1.0, 2.0, 3000


def histogram(scores: np.ndarray) -> np.ndarray:
    """Counts of `scores` on the fixed grid (values outside go to the end bins)."""
    clipped = np.clip(scores, GRID_LOW, GRID_HIGH - 1e-9)
    counts, _ = np.histogram(clipped, bins=GRID_BINS, range=(GRID_LOW, GRID_HIGH))
    return counts.astype(np.int64)


def bin_edges() -> np.ndarray:
    return np.linspace(GRID_LOW, GRID_HIGH, GRID_BINS + 1)


def roc_from_histograms(pos: np.ndarray, neg: np.ndarray):
    """(fpr, tpr, thresholds) for 'positive if score >= threshold', high to low."""
    tp = np.concatenate([[0], np.cumsum(pos[::-1])])
    fp = np.concatenate([[0], np.cumsum(neg[::-1])])
    tpr = tp / max(pos.sum(), 1)
    fpr = fp / max(neg.sum(), 1)
    thresholds = np.concatenate([[np.inf], bin_edges()[:-1][::-1]])
    return fpr, tpr, thresholds


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC; ties within a bin count one half."""
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    wins = (pos * neg_below).sum() + 0.5 * (pos * neg).sum()
    return float(wins / (pos.sum() * neg.sum()))


def youden_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    fpr, tpr, thresholds = roc_from_histograms(pos, neg)
    return float(thresholds[int(np.argmax(tpr - fpr))])


def operating_point(pos: np.ndarray, neg: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity and confusion counts at a fixed threshold."""
    above = bin_edges()[:-1] >= threshold
    tp, fn = int(pos[above].sum()), int(pos[~above].sum())
    fp, tn = int(neg[above].sum()), int(neg[~above].sum())
    return {
        "sensitivity": tp / max(tp + fn, 1),
        "specificity": tn / max(tn + fp, 1),
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
    }
