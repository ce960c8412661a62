"""Flower's SecAgg+ (as our server drives it) gives the plain weighted average
within quantisation error, including values far outside the default +-8 range."""

import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from secure_rounds import run_on_legacy

from common.config import RunConfig
from server.server_app import _secure_round

SIZES = (30, 70, 50)  # num_examples per site


def site_update(partition: int) -> list[np.ndarray]:
    rng = np.random.default_rng(partition)
    return [rng.normal(0, 0.01, (40, 3)), rng.uniform(-20, 20, 5)]


class _Site(NumPyClient):
    def __init__(self, partition: int):
        self.partition = partition

    def fit(self, parameters, config):
        return site_update(self.partition), SIZES[self.partition], {}


def run_secure(site_class, server_step):
    """Run `server_step(grid, legacy, strategy)` in a ServerApp over SIZES sites of
    `site_class`, each behind the SecAgg+ mod, in the Simulation Engine."""
    client = ClientApp(
        client_fn=lambda c: site_class(int(c.node_config["partition-id"])).to_client(),
        mods=[secaggplus_mod],
    )
    return run_on_legacy(client, len(SIZES), server_step)


@pytest.mark.simulation
@pytest.mark.slow
def test_secagg_plus_equals_plain_weighted_average():
    zeros = [np.zeros((40, 3)), np.zeros(5)]
    aggregate = run_secure(
        _Site,
        lambda grid, legacy, _: _secure_round(
            grid, legacy, 1, zeros, RunConfig(), clip=32.0, max_weight=max(SIZES)
        ),
    )
    total = sum(SIZES)
    for i, got in enumerate(aggregate):
        expected = sum(n * site_update(p)[i] for p, n in enumerate(SIZES)) / total
        np.testing.assert_allclose(got, expected, atol=1e-5)


D = 20  # feature width of the head test (z is 120-d; fewer keeps lstsq well posed)


def site_features(partition: int, split: str = "train") -> tuple[np.ndarray, ...]:
    """Features far from standardised (mean 40, SD 7), labels from a linear rule;
    validation data a quarter of the training size."""
    rng = np.random.default_rng(10 + partition + (100 if split == "val" else 0))
    n = SIZES[partition] if split == "train" else SIZES[partition] // 4
    x = rng.normal(40.0, 7.0, (n, D))
    y = (x @ np.linspace(-1, 1, D) + rng.normal(0, 5, len(x)) > 0).astype(float)
    return x, y


class _HeadSite(NumPyClient):
    """A site that runs the two head phases with the library the ClientApp uses."""

    def __init__(self, partition: int):
        self.x, self.y = site_features(partition)
        self.val = site_features(partition, "val")

    def fit(self, parameters, config):
        from common.evaluation.linear_head import (
            feature_moments,
            standardized_statistics,
            validation_statistics,
        )

        if config["phase"] == "moments":
            return feature_moments(self.x), len(self.x), {"clipped": 0}
        scale = parameters[-2:]
        stats, clipped = standardized_statistics(self.x, self.y, *scale)
        val, _ = validation_statistics(*self.val, *scale, len(self.x))
        return stats + val, len(self.x), {"clipped": clipped}


def _secure_heads():
    from server.server_app import _federated_lm

    return run_secure(
        _HeadSite,
        lambda grid, legacy, strategy: _federated_lm(
            grid,
            legacy,
            strategy,
            RunConfig(head_ridge=0.0),
            {},
            1,
            [np.zeros(1)],
            max(SIZES),
        ),
    )


@pytest.mark.simulation
@pytest.mark.slow
def test_federated_lm_equals_centralised_least_squares():
    from sklearn.metrics import roc_auc_score

    from common.evaluation.linear_head import predict, with_intercept

    coef = _secure_heads().coefs["model-lm"]
    x = np.concatenate([site_features(p)[0] for p in range(len(SIZES))])
    y = np.concatenate([site_features(p)[1] for p in range(len(SIZES))])
    central, *_ = np.linalg.lstsq(with_intercept(x), y, rcond=None)
    relative = np.abs(coef - central).max() / np.abs(central).max()
    assert relative < 1e-4, relative
    auc_secure = roc_auc_score(y, predict(coef, x))
    auc_central = roc_auc_score(y, predict(central, x))
    assert round(auc_secure, 3) == round(auc_central, 3)


@pytest.mark.simulation
@pytest.mark.slow
def test_federated_ridge_equals_sklearn_ridge_on_the_pooled_data():
    """The secure ridge head (lambda chosen on pooled validation statistics)
    equals scikit-learn's Ridge on all sites' training data pooled, on the
    same standardised features, and its lambda is the grid's best validation
    correlation computed centrally."""
    from sklearn.linear_model import Ridge

    from common.evaluation.linear_head import (
        RIDGE_GRID,
        rescale,
        standardize,
        standardized_statistics,
        to_raw,
    )

    fits = _secure_heads()
    mean, std = fits.scales["model"]
    lam = fits.ridge["model"]["lambda"]
    x = np.concatenate([site_features(p)[0] for p in range(len(SIZES))])
    y = np.concatenate([site_features(p)[1] for p in range(len(SIZES))])
    z = standardize(x, mean, std)
    # ours: mean squared error + lam |w|^2; sklearn: summed error + alpha |w|^2
    reference = Ridge(alpha=lam * len(y), tol=1e-12).fit(z, y)
    beta = np.concatenate([[reference.intercept_], reference.coef_])
    # the run scores with the ridge rescaled to the label's scale (same ranking)
    (gram, moment), _ = standardized_statistics(x, y, mean, std)
    central = to_raw(rescale(beta, gram, moment), mean, std)
    coef = fits.coefs["model-ridge"]
    relative = np.abs(coef - central).max() / np.abs(central).max()
    assert relative < 1e-4, relative

    def val_correlation(alpha: float) -> float:
        x_val = np.concatenate([site_features(p, "val")[0] for p in range(len(SIZES))])
        y_val = np.concatenate([site_features(p, "val")[1] for p in range(len(SIZES))])
        fit = Ridge(alpha=alpha * len(y), tol=1e-12).fit(z, y)
        score = fit.predict(standardize(x_val, mean, std))
        return float(np.corrcoef(score, y_val)[0, 1])

    correlations = [val_correlation(a) for a in RIDGE_GRID]
    assert lam == RIDGE_GRID[int(np.argmax(correlations))]
    np.testing.assert_allclose(
        fits.ridge["model"]["val_correlation"], correlations, rtol=1e-3
    )
