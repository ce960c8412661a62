"""Drive secure rounds the way our ServerApp does, in the Simulation Engine."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ConfigRecord
from flwr.clientapp import ClientApp
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from server.phase_strategy import PhaseStrategy
from server.server_app import _wait_for_nodes


def run_on_legacy(client_app: ClientApp, n_sites: int, server_step: Callable):
    """Run `server_step(grid, legacy, strategy)` in a ServerApp whose legacy
    context and PhaseStrategy train every one of `n_sites` simulated nodes;
    return what it returned."""
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
        try:
            _wait_for_nodes(grid, n_sites, 60)
            strategy.train_node_ids = {int(n) for n in grid.get_node_ids()}
            legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord()
            result["value"] = server_step(grid, legacy, strategy)
        finally:
            stop.set()
            thread.join()

    run_simulation(
        server_app=server,
        client_app=client_app,
        num_supernodes=n_sites,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return result["value"]
