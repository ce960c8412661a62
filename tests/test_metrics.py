"""Histogram ROC metrics against scikit-learn, per-score DeLong, scipy's Wilson
interval and hand-computed or published small cases."""

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score, roc_curve

from common.evaluation.linear_head import solve, sufficient_statistics
from common.evaluation.metrics import (
    auc_ci_from_histograms,
    auc_from_histograms,
    bin_edges,
    delong_from_histograms,
    histogram,
    operating_point,
    roc_from_histograms,
    wilson_ci,
    youden_threshold,
)
from common.evaluation.roc_stats import auc_ci, delong_auc


def _binned(scores: np.ndarray) -> np.ndarray:
    """Each score replaced by its bin's lower edge: the values the histogram keeps."""
    counts = histogram(scores)
    return np.repeat(bin_edges()[:-1], counts)


def _lm_like_scores(seed: int, n_pos: int, n_neg: int, shift: float):
    """Least-squares-on-0/1 predictions: roughly in [-0.5, 1.5], the grid's scale."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.5 + shift, 0.35, n_pos), rng.normal(0.5 - shift, 0.35, n_neg)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shift", [0.0, 0.15, 0.4])
def test_histogram_auc_matches_exact_auc(seed, shift):
    pos, neg = _lm_like_scores(seed, 80, 90, shift)
    exact = roc_auc_score(np.r_[np.ones(80), np.zeros(90)], np.r_[pos, neg])
    assert abs(auc_from_histograms(histogram(pos), histogram(neg)) - exact) < 0.002


def test_histogram_auc_equals_sklearn_on_binned_scores():
    pos, neg = _lm_like_scores(1, 40, 50, 0.1)
    labels = np.r_[np.ones(40), np.zeros(50)]
    binned = np.r_[_binned(pos), _binned(neg)]
    assert auc_from_histograms(histogram(pos), histogram(neg)) == pytest.approx(
        roc_auc_score(labels, binned), abs=1e-12
    )


def test_histogram_roc_has_sklearns_points():
    pos, neg = _lm_like_scores(2, 30, 35, 0.2)
    pos = np.r_[pos, pos[:5]]  # exact ties across and within classes
    neg = np.r_[neg, pos[:3]]
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, _ = roc_curve(
        labels, np.r_[_binned(pos), _binned(neg)], drop_intermediate=False
    )
    h_fpr, h_tpr, thresholds = roc_from_histograms(histogram(pos), histogram(neg))
    ours = {(round(a, 12), round(b, 12)) for a, b in zip(h_fpr, h_tpr, strict=True)}
    theirs = {(round(a, 12), round(b, 12)) for a, b in zip(fpr, tpr, strict=True)}
    assert ours == theirs
    assert thresholds[0] == np.inf and np.all(np.diff(thresholds[1:]) < 0)


@pytest.mark.parametrize("seed", range(4))
def test_histogram_delong_equals_per_score_delong_on_binned_scores(seed):
    rng = np.random.default_rng(seed)
    pos, neg = _lm_like_scores(seed, int(rng.integers(2, 60)), 45, 0.2)
    pos = np.r_[pos, neg[:4]]  # ties across classes in the same bin
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    binned = np.r_[_binned(pos), _binned(neg)]
    auc, var = delong_from_histograms(histogram(pos), histogram(neg))
    ref_auc, ref_var = delong_auc(binned, labels)
    assert auc == pytest.approx(ref_auc, abs=1e-12)
    assert var == pytest.approx(ref_var, rel=1e-10)
    assert auc_ci_from_histograms(histogram(pos), histogram(neg)) == pytest.approx(
        auc_ci(binned, labels), abs=1e-12
    )
    assert auc == pytest.approx(
        auc_from_histograms(histogram(pos), histogram(neg)), abs=1e-12
    )


def test_delong_hand_computed_small_case():
    # positives 0.8, 0.6, 0.4; negatives 0.6, 0.2 (one cross-class tie at 0.6)
    # V10 = 1, (1 + 1/2)/2, 1/2 -> AUC 0.75, S10 = 0.0625
    # V01 = (1 + 1/2)/3, 1     -> S01 = 0.125;  var = 0.0625/3 + 0.125/2 = 1/12
    pos, neg = histogram(np.array([0.8, 0.6, 0.4])), histogram(np.array([0.6, 0.2]))
    auc, var = delong_from_histograms(pos, neg)
    assert auc == pytest.approx(0.75) and var == pytest.approx(1 / 12)
    low, high = auc_ci_from_histograms(pos, neg)[1:]
    assert (low, high) == pytest.approx((0.75 - 1.959964 * (1 / 12) ** 0.5, 1.0))


def test_delong_on_hanley_mcneil_rating_example():
    # Hanley & McNeil (Radiology 1982), 109 CT images rated 1-5: published area 0.893
    # (their own SE formula: 0.032); DeLong's SE on the same counts is 0.0307
    abnormal = np.array([3, 2, 2, 11, 33])
    normal = np.array([33, 6, 6, 11, 2])
    auc, var = delong_from_histograms(abnormal, normal)
    assert round(auc, 3) == 0.893
    assert np.sqrt(var) == pytest.approx(0.0307, abs=5e-5)
    assert abs(np.sqrt(var) - 0.032) < 0.002


def test_delong_degenerate_cases():
    one = histogram(np.array([0.9]))
    assert np.isnan(delong_from_histograms(one, np.zeros_like(one))[0])
    assert np.isnan(auc_ci_from_histograms(np.zeros_like(one), one)[1])
    # perfect separation: DeLong's variance is 0, the interval a point
    pos, neg = histogram(np.array([0.9, 0.8])), histogram(np.array([0.1, 0.2]))
    assert auc_ci_from_histograms(pos, neg) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    # Newcombe (Stat Med 1998) Table I, method 3 (Wilson score)
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombes_table(k, n, low, high):
    assert wilson_ci(k, n) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (3, 7), (12, 35), (35, 35), (80, 83)])
def test_wilson_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_ci(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert 0.0 <= wilson_ci(k, n)[0] <= k / n <= wilson_ci(k, n)[1] <= 1.0


def test_wilson_of_nothing_is_undefined():
    assert all(np.isnan(wilson_ci(0, 0)))


def test_operating_point_counts_every_case():
    pos, neg = np.array([0.9, 0.8, 0.2]), np.array([0.1, 0.6])
    point = operating_point(histogram(pos), histogram(neg), 0.5)
    assert (point["tp"], point["fn"], point["fp"], point["tn"]) == (2, 1, 1, 1)
    assert point["sensitivity"] == pytest.approx(2 / 3)
    assert point["specificity"] == pytest.approx(1 / 2)


def test_youden_cut_off_sits_in_the_gap_and_reaches_sklearns_best_j():
    # positives 0.70..0.90, negatives 0.10..0.30: every cut-off in (0.3, 0.7] has J=1
    pos, neg = np.array([0.7, 0.8, 0.9]), np.array([0.1, 0.2, 0.3])
    threshold = youden_threshold(histogram(pos), histogram(neg))
    assert 0.45 < threshold < 0.55  # the middle of the gap, not at 0.7
    point = operating_point(histogram(pos), histogram(neg), threshold)
    assert point["sensitivity"] == 1.0 and point["specificity"] == 1.0

    pos, neg = _lm_like_scores(3, 50, 60, 0.2)
    fpr, tpr, _ = roc_curve(
        np.r_[np.ones(50), np.zeros(60)], np.r_[_binned(pos), _binned(neg)]
    )
    point = operating_point(
        histogram(pos), histogram(neg), youden_threshold(histogram(pos), histogram(neg))
    )
    j = point["sensitivity"] + point["specificity"] - 1
    assert j == pytest.approx((tpr - fpr).max(), abs=1e-12)


def test_pooled_statistics_equal_centralised_least_squares():
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(40, 5)), rng.normal(1, 2, size=(70, 5))
    y1, y2 = rng.integers(0, 2, 40), rng.integers(0, 2, 70)
    s1, s2 = sufficient_statistics(x1, y1), sufficient_statistics(x2, y2)
    pooled = [(40 * a + 70 * b) / 110 for a, b in zip(s1, s2, strict=True)]
    central = sufficient_statistics(np.vstack([x1, x2]), np.r_[y1, y2])
    np.testing.assert_allclose(solve(*pooled), solve(*central), rtol=1e-10)


def test_paired_delong_difference_equals_the_two_aucs_difference():
    from sklearn.metrics import roc_auc_score

    from common.evaluation.roc_stats import paired_delong

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 60)
    a = labels + rng.normal(0, 0.8, 60)
    b = labels + rng.normal(0, 1.5, 60)
    got = paired_delong(a, b, labels)
    expected = roc_auc_score(labels, a) - roc_auc_score(labels, b)
    assert got["diff"] == pytest.approx(expected)
    low, high = got["diff_ci"]
    assert low < got["diff"] < high and 0 < got["p"] < 1


def test_paired_delong_of_a_reversed_score_has_twice_the_ci_of_one_auc():
    """b = -a: AUC(b) = 1 - AUC(a), its components are 1 minus a's, so the
    difference's variance is 4 var(AUC(a)), its half-width twice a's."""
    from statistics import NormalDist

    from common.evaluation.roc_stats import paired_delong

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 40)
    a = labels + rng.normal(0, 1.0, 40)
    auc, var = delong_auc(a, labels)
    got = paired_delong(a, -a, labels)
    assert got["diff"] == pytest.approx(2 * auc - 1)
    half = (got["diff_ci"][1] - got["diff_ci"][0]) / 2
    assert half == pytest.approx(2 * NormalDist().inv_cdf(0.975) * np.sqrt(var))


def test_paired_delong_of_the_same_score_is_no_difference():
    from common.evaluation.roc_stats import paired_delong

    labels = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.8, 0.4, 0.3, 0.9, 0.2])
    got = paired_delong(scores, scores, labels)
    assert got["diff"] == 0 and got["p"] == 1.0
    assert np.isnan(paired_delong(scores, scores, np.ones(6))["p"])
    with pytest.raises(ValueError, match="one per case"):
        paired_delong(scores, scores[:3], labels)
