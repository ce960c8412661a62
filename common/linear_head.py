"""The paper's linear head: least squares on the 0/1 label, from pooled statistics.

Sites send the normalised sufficient statistics (X'X / n, X'y / n) of their features
with an intercept column; the pooled n-weighted average of those is exactly the
statistics of the pooled data, so solving it equals a centralised fit.
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


def solve(gram: np.ndarray, moment: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """Coefficients (intercept first); the ridge term spares the intercept."""
    penalty = ridge * np.eye(len(gram))
    penalty[0, 0] = 0.0
    return np.linalg.solve(gram + penalty, moment)


def predict(coef: np.ndarray, features: np.ndarray) -> np.ndarray:
    return with_intercept(features) @ coef
