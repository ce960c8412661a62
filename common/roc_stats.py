"""Exact AUC with DeLong's 95% confidence interval, for data held in one place.

Used where the scores are local (centralised baselines, a site's own probe); the
federated path uses the histogram ROC in `common.metrics`.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def _midranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata  # lazily: ClientApps that never rank skip it

    return rankdata(x, method="average")


def delong_auc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong variance (DeLong et al. 1988, Sun & Xu's midrank form)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    all_ranks = _midranks(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - _midranks(pos)) / n  # structural components, positives
    v01 = 1.0 - (all_ranks[m:] - _midranks(neg)) / m  # and negatives
    auc = float(v10.mean())
    var = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (
        np.var(v01, ddof=1) / n if n > 1 else 0.0
    )
    return auc, float(var)


def auc_ci(
    scores: np.ndarray, labels: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """(AUC, low, high) with DeLong's normal interval, clipped to [0, 1]."""
    auc, var = delong_auc(scores, labels)
    if not np.isfinite(auc):
        return auc, float("nan"), float("nan")
    half = NormalDist().inv_cdf(0.5 + level / 2) * np.sqrt(var)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


PATIENT_SCORES = {"mean": np.mean, "median": np.median, "max": np.max}


def patient_score(slice_scores: np.ndarray, how: str = "mean") -> float:
    """One patient's score from its slices' (the paper: the mean)."""
    try:
        return float(PATIENT_SCORES[how](slice_scores))
    except KeyError:
        raise ValueError(
            f"patient-score={how!r}: use one of {sorted(PATIENT_SCORES)}"
        ) from None


def patient_scores(
    slice_scores: np.ndarray,
    patient: np.ndarray,
    labels: np.ndarray,
    how: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """Score per patient (`how` over its slices; the paper: mean) and label."""
    ids = np.unique(patient)
    return (
        np.array([patient_score(slice_scores[patient == i], how) for i in ids]),
        np.array([labels[patient == i][0] for i in ids]),
    )
