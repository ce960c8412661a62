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


def site_features(partition: int) -> tuple[np.ndarray, np.ndarray]:
    """Features far from standardised (mean 40, SD 7), labels from a linear rule."""
    rng = np.random.default_rng(10 + partition)
    x = rng.normal(40.0, 7.0, (SIZES[partition], D))
    y = (x @ np.linspace(-1, 1, D) + rng.normal(0, 5, len(x)) > 0).astype(float)
    return x, y


class _HeadSite(NumPyClient):
    """A site that runs the two head phases with the library the ClientApp uses."""

    def __init__(self, partition: int):
        self.x, self.y = site_features(partition)

    def fit(self, parameters, config):
        from common.linear_head import feature_moments, standardized_statistics

        if config["phase"] == "moments":
            return feature_moments(self.x), len(self.x), {"clipped": 0}
        stats, clipped = standardized_statistics(self.x, self.y, *parameters[-2:])
        return stats, len(self.x), {"clipped": clipped}


@pytest.mark.simulation
@pytest.mark.slow
def test_federated_lm_equals_centralised_least_squares():
    from sklearn.metrics import roc_auc_score

    from common.linear_head import predict, with_intercept
    from server.server_app import _federated_lm

    coef, _ = run_secure(
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
    x = np.concatenate([site_features(p)[0] for p in range(len(SIZES))])
    y = np.concatenate([site_features(p)[1] for p in range(len(SIZES))])
    central, *_ = np.linalg.lstsq(with_intercept(x), y, rcond=None)
    relative = np.abs(coef - central).max() / np.abs(central).max()
    assert relative < 1e-4, relative
    auc_secure = roc_auc_score(y, predict(coef, x))
    auc_central = roc_auc_score(y, predict(central, x))
    assert round(auc_secure, 3) == round(auc_central, 3)
