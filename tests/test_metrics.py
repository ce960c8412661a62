"""Histogram ROC agrees with scikit-learn on the same scores."""

import numpy as np
from sklearn.metrics import roc_auc_score

from common.linear_head import solve, sufficient_statistics
from common.metrics import auc_from_histograms, histogram, operating_point


def test_histogram_auc_matches_exact_auc():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.7, 0.3, 80), rng.normal(0.4, 0.3, 90)
    exact = roc_auc_score(np.r_[np.ones(80), np.zeros(90)], np.r_[pos, neg])
    assert abs(auc_from_histograms(histogram(pos), histogram(neg)) - exact) < 0.002


def test_operating_point_counts_every_case():
    pos, neg = np.array([0.9, 0.8, 0.2]), np.array([0.1, 0.6])
    point = operating_point(histogram(pos), histogram(neg), 0.5)
    assert (point["tp"], point["fn"], point["fp"], point["tn"]) == (2, 1, 1, 1)


def test_pooled_statistics_equal_centralised_least_squares():
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(40, 5)), rng.normal(1, 2, size=(70, 5))
    y1, y2 = rng.integers(0, 2, 40), rng.integers(0, 2, 70)
    s1, s2 = sufficient_statistics(x1, y1), sufficient_statistics(x2, y2)
    pooled = [(40 * a + 70 * b) / 110 for a, b in zip(s1, s2, strict=True)]
    central = sufficient_statistics(np.vstack([x1, x2]), np.r_[y1, y2])
    np.testing.assert_allclose(solve(*pooled), solve(*central), rtol=1e-10)
