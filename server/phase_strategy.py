"""A legacy Flower strategy that sends one phase's instructions to training sites.

SecAgg+ (Flower's SecAggPlusWorkflow) asks the strategy whom to train and hands
back only the securely aggregated vector; this strategy keeps that vector and the
per-site aggregate metrics for the ServerApp to use.
"""

from __future__ import annotations

from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy


class PhaseStrategy(Strategy):
    def __init__(self, train_node_ids: set[int]):
        self.train_node_ids = train_node_ids
        self.config: dict = {}
        self.aggregate = None
        self.site_metrics: list[dict] = []
        self.train_messages_to: set[int] = set()  # audit: who ever got a train message

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters: Parameters, client_manager):
        clients = [
            proxy
            for node_id, proxy in client_manager.all().items()
            if int(node_id) in self.train_node_ids
        ]
        self.train_messages_to |= {int(proxy.node_id) for proxy in clients}
        return [(proxy, FitIns(parameters, dict(self.config))) for proxy in clients]

    def aggregate_fit(self, server_round, results, failures):
        if failures:
            raise RuntimeError(f"round {server_round}: {len(failures)} site(s) failed")
        self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        self.site_metrics = [dict(res.metrics) for _, res in results]
        return results[0][1].parameters, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None
