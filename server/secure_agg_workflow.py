"""Server side of our secure aggregation (common.secure_agg): the role of
Flower's `SecAggPlusWorkflow`, on the Message API.

`SecureAggregator.run(grid, contents)` runs one secure round over the nodes of
`contents` (node id -> the train message content each should get) and returns
the weighted mean of their reply arrays, never one node's. `SecureAggWorkflow`
wraps it as a drop-in for `SecAggPlusWorkflow` in the legacy
`DefaultWorkflow`/`LegacyContext` path: same constructor arguments, same use of
the strategy's `configure_fit`/`aggregate_fit`.

`lane_bits=16` with one public clip per array (`tensor_clips`) halves the
upload: the sites send uint16 lanes, masked mod 2**16 (see
server.transport for where the clips come from).

The parts: `server.secure_aggregator` (the stages), `server.secure_agg_round`
(a round's state, statistics and result), `server.secure_agg_sum` (the masked
sum and its decoding).
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

# `noqa: F401`: public names of this module before the split, importable here still.
from server.secure_agg_round import (
    RoundStats,
    SecureAggregationError,
    SecureResult,  # noqa: F401
    content_bytes,  # noqa: F401
)
from server.secure_aggregator import SecureAggregator

log = logging.getLogger("flwr")


class SecureAggWorkflow(SecureAggregator):
    """Drop-in for `SecAggPlusWorkflow(...)(grid, legacy_context)`: asks the
    legacy strategy whom to train (`configure_fit`), runs one secure round, and
    hands `aggregate_fit` FitRes whose parameters are the secure mean (the
    nodes' own metrics as they sent them). On failure it logs and returns
    without calling `aggregate_fit`, as SecAgg+ does."""

    last_stats: RoundStats | None = None  # the last completed round's time, bytes
    last_error: str | None = None  # why the last round halted, if it did

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"expected a LegacyContext, got {type(context).__name__}")
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        current_round = int(cfg[WorkflowKey.CURRENT_ROUND])
        parameters = compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
        )
        pairs = context.strategy.configure_fit(
            current_round, parameters, context.client_manager
        )
        if not pairs:
            log.info("configure_fit: no clients selected, cancel")
            return
        proxies = {proxy.node_id: proxy for proxy, _ in pairs}
        contents = {
            proxy.node_id: compat.fitins_to_recorddict(fitins, True)
            for proxy, fitins in pairs
        }
        try:
            result = self.run(grid, contents, group_id=str(current_round))
        except SecureAggregationError as err:
            log.error("secure aggregation halted: %s", err)
            self.last_error = str(err)
            return
        self.last_stats = result.stats
        mean = ndarrays_to_parameters(result.ndarrays("fitres.parameters"))
        results = []
        for nid, content in sorted(result.replies.items()):
            fitres = compat.recorddict_to_fitres(content, keep_input=True)
            fitres.parameters = mean
            results.append((proxies[nid], fitres))
        failures: list[BaseException] = [Exception(f) for f in result.failures]
        aggregated, metrics = context.strategy.aggregate_fit(
            current_round, results, failures
        )
        if aggregated:
            context.state.array_records[MAIN_PARAMS_RECORD] = (
                compat.parameters_to_arrayrecord(aggregated, True)
            )
            context.history.add_metrics_distributed_fit(
                server_round=current_round, metrics=metrics
            )
