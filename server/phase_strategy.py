"""A legacy Flower strategy that sends one phase's instructions to training sites.

SecAgg+ (Flower's SecAggPlusWorkflow) asks the strategy whom to train and hands
back only the securely aggregated vector; this strategy keeps that vector and the
per-site aggregate metrics for the ServerApp to use.
"""

from __future__ import annotations

import logging

from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy

from server.secure_agg_round import KeysAhead

log = logging.getLogger("flwr")


class PhaseStrategy(Strategy):
    def __init__(self, train_node_ids: set[int]):
        self.train_node_ids = train_node_ids
        self.config: dict = {}
        self.aggregate = None
        self.site_metrics: list[dict] = []
        self.declared: dict[int, object] = {}  # node -> its example count (clear)
        self.dropped = 0  # sites lost in the last round
        self._asked = 0  # sites sent the last round's train message
        self.train_messages_to: set[int] = set()  # audit: who ever got a train message
        self.timings: list[dict] = []  # per secure round, see server.timing
        self.wire: list[dict] = []  # per round of ours: bytes and lanes (payload)
        self.roster = None  # server.roster.Roster: enrolled sites, agreed weights
        self.refused: list[str] = []  # nodes the roster refused in a round
        # ours: the sites' keys for the next secure round, sent on the last one
        self.keys_ahead = KeysAhead()

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters: Parameters, client_manager):
        clients = [
            proxy
            for node_id, proxy in client_manager.all().items()
            if int(node_id) in self.train_node_ids
        ]
        self.train_messages_to |= {int(proxy.node_id) for proxy in clients}
        self._asked = len(clients)
        return [(proxy, FitIns(parameters, dict(self.config))) for proxy in clients]

    def aggregate_fit(self, server_round, results, failures):
        """Keep the SecAgg+ mean of the sites that completed the round.

        SecAgg+ already dropped the sites that failed or timed out, unmasked the
        rest with their neighbours' shares, and averaged only those; the round
        stands as long as enough sites remained for that (below the
        reconstruction threshold the workflow stops before reaching here).
        """
        if not results:
            raise RuntimeError(f"round {server_round}: no site completed the round")
        # Flower's SecAgg+ workflow can list one lost site twice in `failures`
        # (stage and unmasking): count the sites that did not complete instead
        self.dropped = (
            max(self._asked - len(results), 0) if self._asked else len(failures)
        )
        if failures:
            log.warning(
                "round %d: %d site(s) dropped (%s); the round goes on with %d",
                server_round,
                self.dropped,
                "; ".join(str(f) for f in failures)[:300],
                len(results),
            )
        self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        self.site_metrics = [dict(res.metrics) for _, res in results]
        self.declared = {int(proxy.node_id): res.num_examples for proxy, res in results}
        return results[0][1].parameters, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None
