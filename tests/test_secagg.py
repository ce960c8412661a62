"""Flower's SecAgg+ (as our server drives it) gives the plain weighted average
within quantisation error, including values far outside the default +-8 range."""

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from common.config import RunConfig
from server.phase_strategy import PhaseStrategy
from server.server_app import _secure_round, _wait_for_nodes

SIZES = (30, 70, 50)  # num_examples per site


def site_update(partition: int) -> list[np.ndarray]:
    rng = np.random.default_rng(partition)
    return [rng.normal(0, 0.01, (40, 3)), rng.uniform(-20, 20, 5)]


class _Site(NumPyClient):
    def __init__(self, partition: int):
        self.partition = partition

    def fit(self, parameters, config):
        return site_update(self.partition), SIZES[self.partition], {}


@pytest.mark.slow
def test_secagg_plus_equals_plain_weighted_average():
    client = ClientApp(
        client_fn=lambda ctx: _Site(int(ctx.node_config["partition-id"])).to_client(),
        mods=[secaggplus_mod],
    )
    result = {}
    server = ServerApp()

    @server.main()
    def _main(grid, context):
        strategy = PhaseStrategy(set())
        legacy = LegacyContext(context, ServerConfig(num_rounds=1), strategy=strategy)
        thread, stop, ready = start_update_client_manager_thread(
            grid, legacy.client_manager
        )
        ready.wait()
        _wait_for_nodes(grid, len(SIZES), 60)
        strategy.train_node_ids = {int(n) for n in grid.get_node_ids()}
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord()
        zeros = [np.zeros((40, 3)), np.zeros(5)]
        result["aggregate"] = _secure_round(
            grid, legacy, 1, zeros, RunConfig(), clip=32.0, max_weight=max(SIZES)
        )
        stop.set()
        thread.join()

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=len(SIZES),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    total = sum(SIZES)
    for i, got in enumerate(result["aggregate"]):
        expected = sum(n * site_update(p)[i] for p, n in enumerate(SIZES)) / total
        np.testing.assert_allclose(got, expected, atol=1e-5)
