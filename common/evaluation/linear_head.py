"""The paper's linear head: least squares on the 0/1 label, from pooled statistics.

Sites send the normalised sufficient statistics (X'X / n, X'y / n) of their features
with an intercept column; the pooled n-weighted average of those is exactly the
statistics of the pooled data, so solving it equals a centralised fit.

Through SecAgg+ every value is clipped to a range and quantised, so precision is
range / 2**bits. Raw features have no known range; hence two secure rounds: the
pooled mean and variance of each feature first, then the statistics of features
standardised with them (|x| <= Z_CLIP, so every statistic lies in [-Z_CLIP**2,
Z_CLIP**2]). The solution is mapped back to raw features exactly.
"""

from __future__ import annotations

import numpy as np


def with_intercept(features: np.ndarray) -> np.ndarray:
    return np.hstack([np.ones((len(features), 1)), features])


def sufficient_statistics(features: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """[X'X / n, X'y / n] for one site (X with an intercept column)."""
    x = with_intercept(features)
    n = max(len(x), 1)
    return [x.T @ x / n, x.T @ labels.astype(np.float64) / n]


Z_CLIP = 8.0  # standardised features beyond 8 SD are clipped (and counted)
STATS_CLIP = Z_CLIP**2  # the SecAgg+ clipping range of standardised statistics


def feature_moments(features: np.ndarray) -> list[np.ndarray]:
    """[mean, mean of squares] of each feature at one site (round 1)."""
    x = np.asarray(features, np.float64)
    n = max(len(x), 1)
    return [x.sum(0) / n, (x**2).sum(0) / n]


def pooled_scale(
    mean: np.ndarray, mean_sq: np.ndarray, variance_floor: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and standard deviation (1 where a feature is constant).

    `variance_floor` covers the error of moments that went through SecAgg+'s
    quantisation: an overestimated SD costs a little precision, an
    underestimated one would clip real values at Z_CLIP.
    """
    variance = np.maximum(mean_sq - mean**2, 0.0) + variance_floor * (
        1.0 + 2.0 * np.abs(mean)
    )
    std = np.sqrt(variance)
    return mean, np.where(std > 1e-12, std, 1.0)


def standardized_statistics(
    features: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> tuple[list[np.ndarray], int]:
    """Round 2: statistics of (x - mean) / std, clipped to +-Z_CLIP; and how many
    feature values were clipped."""
    z = (np.asarray(features, np.float64) - mean) / std
    clipped = int((np.abs(z) > Z_CLIP).sum())
    return sufficient_statistics(np.clip(z, -Z_CLIP, Z_CLIP), labels), clipped


def solve_standardized(
    gram: np.ndarray,
    moment: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    ridge: float = 0.0,
) -> np.ndarray:
    """Solve in standardised space (ridge on standardised weights), return the
    coefficients for raw features (intercept first)."""
    return to_raw(solve(gram, moment, ridge), mean, std)


def solve(gram: np.ndarray, moment: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """Coefficients (intercept first); the ridge term spares the intercept."""
    penalty = ridge * np.eye(len(gram))
    penalty[0, 0] = 0.0
    return np.linalg.solve(gram + penalty, moment)


def predict(coef: np.ndarray, features: np.ndarray) -> np.ndarray:
    return with_intercept(features) @ coef


def to_raw(beta: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Coefficients on standardised features -> the same model on raw features."""
    weights = beta[1:] / std
    return np.concatenate([[beta[0] - weights @ mean], weights])


def logistic_steps(
    beta: np.ndarray,
    z: np.ndarray,
    labels: np.ndarray,
    steps: int,
    lr: float,
    l2: float,
) -> np.ndarray:
    """Full-batch gradient descent on the mean logistic loss (+ l2 on weights) of
    standardised features `z`, from `beta` (intercept first)."""
    x = with_intercept(z)
    y = labels.astype(np.float64)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -30, 30)))
        grad = x.T @ (p - y) / max(len(y), 1)
        grad[1:] += l2 * beta[1:]
        beta = beta - lr * grad
    return beta


def standardize(features: np.ndarray, mean: np.ndarray, std: np.ndarray):
    """(x - mean) / std clipped at +-Z_CLIP, as every site does it."""
    return np.clip((np.asarray(features, np.float64) - mean) / std, -Z_CLIP, Z_CLIP)


def validation_statistics(
    features: np.ndarray,
    labels: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    n_train: int,
) -> tuple[list[np.ndarray], int]:
    """A site's validation X'X and X'y (standardised with the training scale)
    divided by its *training* count: the secure round weights every reply by
    that count, so the pooled result is sum(X'X) / sum(n_train), and its
    intercept entry sum(n_val) / sum(n_train) gives back the normalisation
    (`ridge_path`). Clipped values are counted as in round 2."""
    stats, clipped = standardized_statistics(features, labels, mean, std)
    share = len(features) / max(n_train, 1)
    return [s * share for s in stats], clipped


def rescale(beta: np.ndarray, gram: np.ndarray, moment: np.ndarray) -> np.ndarray:
    """`beta` times b plus a, with (a, b) the least-squares fit of the label on
    its score over the data of `gram` and `moment` (exact from them): the same
    ranking, on the label's 0/1 scale. A strongly shrunk ridge head scores
    every case within a few thousandths, finer than the evaluation's score
    grid (0.001) resolves; rescaled, it spreads like the lm's."""
    mean_s, mean_y = float(gram[0] @ beta), float(moment[0])
    var_s = float(beta @ gram @ beta) - mean_s**2
    if var_s <= 1e-300:  # a constant score: nothing to spread
        return beta
    slope = (float(beta @ moment) - mean_s * mean_y) / var_s
    out = slope * np.asarray(beta, np.float64)
    out[0] += mean_y - slope * mean_s
    return out


def patient_means(
    features: np.ndarray, patient: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each patient's mean feature vector and label. A linear head's score of
    the mean is the mean of its slice scores (the paper's patient score), so
    statistics of these judge a head at the patient level exactly."""
    ids = np.unique(patient)
    x = np.asarray(features, np.float64)
    if not len(ids):
        return np.zeros((0, x.shape[1])), np.zeros(0)
    return (
        np.stack([x[patient == i].mean(axis=0) for i in ids]),
        np.array([labels[patient == i][0] for i in ids]),
    )


# Candidate ridge strengths on standardised features (X'X/n has ~1 on its
# diagonal, so 1e-3 is the paper's near-plain lm and 1e3 shrinks almost to the
# intercept): half decades.
RIDGE_GRID = tuple(float(10.0 ** (k / 2)) for k in range(-6, 7))


def squared_error(beta: np.ndarray, gram: np.ndarray, moment: np.ndarray) -> float:
    """Mean squared error of `beta` on data whose normalised statistics are
    `gram` = X'X/n and `moment` = X'y/n: y is 0/1, so y'y/n = mean(y) =
    moment[0] (the intercept column), and the error is exact."""
    return float(beta @ gram @ beta - 2.0 * beta @ moment + moment[0])


def score_correlation(beta: np.ndarray, gram: np.ndarray, moment: np.ndarray) -> float:
    """Correlation of the score x'beta with the 0/1 label (point-biserial) on
    data whose normalised statistics are `gram` and `moment` (intercept
    column first): exact from them; NaN when the score or label is constant."""
    mean_x, mean_y = gram[0, 1:], moment[0]
    cov_xx = gram[1:, 1:] - np.outer(mean_x, mean_x)
    cov_xy = moment[1:] - mean_x * mean_y
    w = beta[1:]
    var_s, var_y = float(w @ cov_xx @ w), float(mean_y * (1.0 - mean_y))
    if var_s <= 0 or var_y <= 0:
        return float("nan")
    return float(w @ cov_xy / np.sqrt(var_s * var_y))


def ridge_path(
    gram: np.ndarray,
    moment: np.ndarray,
    val_gram: np.ndarray,
    val_moment: np.ndarray,
    grid: tuple[float, ...] = RIDGE_GRID,
) -> tuple[float, list[float]]:
    """The ridge strength of `grid` whose scores correlate best with the label
    on the validation data (the sites send patient means: `patient_means`),
    and each candidate's correlation (NaN for all,
    and the grid's middle, without validation data of both classes).

    Why this criterion: it follows exactly from statistics the head round
    already pools (no extra secure round, no per-candidate histograms); like
    the AUC it ignores a shift and scale of the scores (which differ between
    sites and which squared error would punish: on the phantom study it chose
    the strongest shrinkage, the flattest scores, every time), and for
    normally distributed scores it rises with the AUC (both are monotone in
    the classes' standardised mean difference); and it is smooth in lambda,
    whereas an AUC over a handful of validation patients ties across most of
    the grid."""
    share = float(val_gram[0, 0])  # sum(n_val) / sum(n_train)
    if share <= 0:
        return grid[len(grid) // 2], [float("nan")] * len(grid)
    vg, vm = val_gram / share, val_moment / share
    scores = [score_correlation(solve(gram, moment, lam), vg, vm) for lam in grid]
    if not np.isfinite(scores).any():
        return grid[len(grid) // 2], scores
    return grid[int(np.nanargmax(scores))], scores
