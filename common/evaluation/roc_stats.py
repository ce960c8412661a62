"""Exact AUC with DeLong's 95% confidence interval, for data held in one place.

Used where the scores are local (centralised baselines, a site's own probe); the
federated path uses the histogram ROC in `common.evaluation.metrics`.
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


def _components(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components (positives', negatives')."""
    pos, neg = scores[labels], scores[~labels]
    m, n = len(pos), len(neg)
    all_ranks = _midranks(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - _midranks(pos)) / n
    v01 = 1.0 - (all_ranks[m:] - _midranks(neg)) / m
    return float(v10.mean()), v10, v01


def paired_delong(
    scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, level: float = 0.95
) -> dict:
    """AUC(a) - AUC(b) of two scores of the same cases, DeLong's paired test
    (DeLong et al. 1988): the difference, its normal CI and two-sided p.

    NaN throughout when a class is missing; with one case in a class the
    covariance terms of that class are 0, as in `delong_auc`.
    """
    labels = np.asarray(labels).astype(bool)
    a, b = np.asarray(scores_a, float), np.asarray(scores_b, float)
    if a.shape != b.shape or a.shape != labels.shape:
        raise ValueError("paired_delong: both scores and the labels need one per case")
    m, n = int(labels.sum()), int((~labels).sum())
    nan = float("nan")
    if m == 0 or n == 0:
        return {"diff": nan, "diff_ci": [nan, nan], "p": nan}
    auc_a, v10a, v01a = _components(a, labels)
    auc_b, v10b, v01b = _components(b, labels)

    def cov(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.cov(np.vstack([x, y]), ddof=1) if len(x) > 1 else np.zeros((2, 2))

    s = cov(v10a, v10b) / m + cov(v01a, v01b) / n
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    diff = auc_a - auc_b
    normal = NormalDist()
    if var <= 0:  # identical rankings, or a degenerate split
        p = 1.0 if diff == 0 else 0.0
        return {"diff": diff, "diff_ci": [diff, diff], "p": p}
    sd = np.sqrt(var)
    half = normal.inv_cdf(0.5 + level / 2) * sd
    p = 2.0 * (1.0 - normal.cdf(abs(diff) / sd))
    return {"diff": diff, "diff_ci": [diff - half, diff + half], "p": float(p)}


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
