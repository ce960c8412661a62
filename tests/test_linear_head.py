"""The heads' arithmetic: standardised least squares and the logistic steps."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from common.evaluation.linear_head import (
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


def test_ridge_solve_equals_sklearn_ridge_on_the_same_standardised_features():
    from sklearn.linear_model import Ridge

    from common.evaluation.linear_head import solve

    mean, std = pooled_scale(*feature_moments(X))
    z = standardize(X, mean, std)
    (gram, moment), _ = standardized_statistics(X, Y, mean, std)
    lam = 0.3
    beta = solve(gram, moment, lam)
    # ours: mean squared error + lam |w|^2; sklearn: summed error + alpha |w|^2
    reference = Ridge(alpha=lam * len(Y), fit_intercept=True, tol=1e-12).fit(z, Y)
    np.testing.assert_allclose(beta[1:], reference.coef_, rtol=1e-8)
    assert beta[0] == pytest.approx(reference.intercept_, rel=1e-8)


def test_validation_criteria_from_statistics_equal_the_direct_ones():
    from common.evaluation.linear_head import (
        RIDGE_GRID,
        ridge_path,
        score_correlation,
        solve,
        squared_error,
        validation_statistics,
    )

    mean, std = pooled_scale(*feature_moments(X[:200]))
    (gram, moment), _ = standardized_statistics(X[:200], Y[:200], mean, std)
    (vgram, vmoment), _ = validation_statistics(X[200:], Y[200:], mean, std, 200)
    assert vgram[0, 0] == pytest.approx(100 / 200)  # the share of validation cases
    best, correlations = ridge_path(gram, moment, vgram, vmoment)
    z_val = with_intercept(standardize(X[200:], mean, std))
    for lam, got in zip(RIDGE_GRID, correlations, strict=True):
        direct = np.corrcoef(z_val @ solve(gram, moment, lam), Y[200:])[0, 1]
        assert got == pytest.approx(direct, rel=1e-9)
    assert best == RIDGE_GRID[int(np.argmax(correlations))]
    beta = solve(gram, moment, 1.0)
    z_train = with_intercept(standardize(X[:200], mean, std))
    assert squared_error(beta, gram, moment) == pytest.approx(
        np.mean((Y[:200] - z_train @ beta) ** 2)
    )
    assert score_correlation(beta, gram, moment) == pytest.approx(
        np.corrcoef(z_train @ beta, Y[:200])[0, 1]
    )


def test_ridge_path_without_validation_data_keeps_the_grids_middle():
    from common.evaluation.linear_head import RIDGE_GRID, ridge_path

    zeros = np.zeros((7, 7))
    best, errors = ridge_path(np.eye(7), np.ones(7), zeros, np.zeros(7))
    assert best == RIDGE_GRID[len(RIDGE_GRID) // 2] and np.isnan(errors).all()


def test_a_heads_score_of_a_patients_mean_features_is_its_mean_slice_score():
    from common.evaluation.linear_head import patient_means
    from common.evaluation.roc_stats import patient_scores

    patient = np.repeat(np.arange(50), 6)
    labels = np.repeat(np.arange(50) % 2, 6)
    coef = np.linspace(-1, 1, 7)
    means, y = patient_means(X, patient, labels)
    expected, expected_y = patient_scores(predict(coef, X), patient, labels)
    np.testing.assert_allclose(predict(coef, means), expected)
    np.testing.assert_array_equal(y, expected_y)


def test_rescaled_ridge_keeps_its_ranking_on_the_labels_scale():
    from common.evaluation.linear_head import rescale, solve

    mean, std = pooled_scale(*feature_moments(X))
    z = with_intercept(standardize(X, mean, std))
    (gram, moment), _ = standardized_statistics(X, Y, mean, std)
    beta = solve(gram, moment, 1e3)  # strong: scores within a few hundredths
    spread = rescale(beta, gram, moment)
    before, after = z @ beta, z @ spread
    assert np.ptp(before) < 0.1 < np.ptp(after)
    np.testing.assert_array_equal(np.argsort(before), np.argsort(after))
    # the least-squares line of the label on the score: mean and covariance kept
    assert after.mean() == pytest.approx(Y.mean())
    assert np.cov(after, Y)[0, 1] == pytest.approx(np.var(after, ddof=1))
