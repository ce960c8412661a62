"""ROC analysis from score histograms, so no per-patient score leaves a site.

Scores are binned on a fixed grid; sites return per-class counts, the server sums
them and computes ROC, AUC and the operating point from the pooled counts.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

GRID_LOW, GRID_HIGH, GRID_BINS = -1.0, 2.0, 3000


TRAIN_SITE_SPLITS = ("train", "val", "test")
LEVELS = ("slice", "patient")


def histogram_keys(splits: tuple[str, ...] = TRAIN_SITE_SPLITS) -> list[str]:
    """The fixed order in which a site's histograms travel as arrays."""
    return [
        f"{split}/{level}/{cls}"
        for split in splits
        for level in LEVELS
        for cls in ("pos", "neg")
    ]


def histogram(scores: np.ndarray) -> np.ndarray:
    """Counts of `scores` on the fixed grid (values outside go to the end bins)."""
    clipped = np.clip(scores, GRID_LOW, GRID_HIGH - 1e-9)
    counts, _ = np.histogram(clipped, bins=GRID_BINS, range=(GRID_LOW, GRID_HIGH))
    return counts.astype(np.int64)


def bin_edges() -> np.ndarray:
    """The grid's GRID_BINS + 1 edges; bin k holds edge[k] <= score < edge[k + 1]."""
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
    """Cut-off maximising Youden's J = sensitivity + specificity - 1.

    Every grid edge in a run of empty bins gives the same J; the middle edge of the
    first (highest) run of maximal J is taken, as a midpoint between the scores on
    either side, so the cut-off does not hug one class's lowest score.
    """
    fpr, tpr, thresholds = roc_from_histograms(pos, neg)
    j = tpr - fpr
    best = int(np.argmax(j))
    end = best
    while end + 1 < len(j) and j[end + 1] == j[best]:
        end += 1
    if best == 0:  # no cut-off beats "all negative" (e.g. one class missing)
        return float(thresholds[0])
    return float(thresholds[(best + end + 1) // 2])


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


def delong_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong variance from per-class counts on the grid.

    Scores in one bin are tied, so DeLong's structural components (Sun & Xu's
    midrank form) are equal within a bin and follow from cumulative counts: a
    positive in bin b scores (negatives below b + half the negatives in b) / n, a
    negative in b scores (positives above b + half the positives in b) / m. The
    result equals `common.evaluation.roc_stats.delong_auc` on the binned scores exactly.
    """
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    m, n = pos.sum(), neg.sum()
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    neg_below = np.cumsum(neg) - neg
    pos_above = pos[::-1].cumsum()[::-1] - pos
    v10 = (neg_below + 0.5 * neg) / n  # per bin, for the positives in it
    v01 = (pos_above + 0.5 * pos) / m  # per bin, for the negatives in it
    auc = float((pos * v10).sum() / m)
    s10 = (pos * (v10 - auc) ** 2).sum() / (m - 1) if m > 1 else 0.0
    s01 = (neg * (v01 - auc) ** 2).sum() / (n - 1) if n > 1 else 0.0
    return auc, float(s10 / m + s01 / n)


def auc_ci_from_histograms(
    pos: np.ndarray, neg: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """(AUC, low, high): DeLong's normal interval from the counts, clipped to [0, 1].

    At AUC 1 (or 0) the variance is 0 and the interval collapses to a point: a
    known limit of DeLong's method with small samples, not certainty.
    """
    auc, var = delong_from_histograms(pos, neg)
    if not np.isfinite(auc):
        return auc, float("nan"), float("nan")
    half = NormalDist().inv_cdf(0.5 + level / 2) * np.sqrt(var)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def wilson_ci(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Newcombe 1998, method 3).

    Chosen over the Wald interval because it stays inside [0, 1] and keeps its
    coverage at 0/n and n/n, which small external sites produce.
    """
    if total <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # at 0/n and n/n the exact bound is 0 or 1; rounding must not move it
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return float(low), float(high)
