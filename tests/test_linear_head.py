"""The heads' arithmetic: standardised least squares and the logistic steps."""

import numpy as np
from sklearn.linear_model import LogisticRegression

from common.linear_head import (
    feature_moments,
    logistic_steps,
    pooled_scale,
    predict,
    solve_standardized,
    standardize,
    standardized_statistics,
    to_raw,
    with_intercept,
)

RNG = np.random.default_rng(0)
X = RNG.normal(40.0, 7.0, (300, 6))
Y = (X @ np.linspace(-1, 1, 6) + RNG.normal(0, 4, 300) > 0).astype(float)


def test_standardised_solve_equals_raw_least_squares():
    mean, std = pooled_scale(*feature_moments(X))
    stats, clipped = standardized_statistics(X, Y, mean, std)
    coef = solve_standardized(*stats, mean, std, ridge=0.0)
    expected, *_ = np.linalg.lstsq(with_intercept(X), Y, rcond=None)
    assert clipped == 0
    np.testing.assert_allclose(coef, expected, rtol=1e-8, atol=1e-10)


def test_variance_floor_only_ever_raises_the_sd():
    mean, std = pooled_scale(*feature_moments(X))
    _, floored = pooled_scale(*feature_moments(X), variance_floor=1e-3)
    assert (floored >= std).all() and (floored < std * 1.01).all()


def test_logistic_steps_reach_sklearns_l2_optimum():
    mean, std = pooled_scale(*feature_moments(X))
    z = standardize(X, mean, std)
    l2 = 0.01
    beta = logistic_steps(np.zeros(7), z, Y, steps=3000, lr=1.0, l2=l2)
    # sklearn minimises 0.5|w|^2 + C * sum(loss); ours mean(loss) + 0.5 * l2 |w|^2
    reference = LogisticRegression(C=1 / (l2 * len(Y)), tol=1e-10, max_iter=10000)
    reference.fit(z, Y)
    np.testing.assert_allclose(beta[1:], reference.coef_[0], atol=1e-3)
    np.testing.assert_allclose(beta[0], reference.intercept_[0], atol=1e-3)
    raw = to_raw(beta, mean, std)  # the same model on raw features
    np.testing.assert_allclose(predict(raw, X), with_intercept(z) @ beta, atol=1e-9)
