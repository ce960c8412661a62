"""The evaluation round: every site scores the final model, external sites apart."""

from __future__ import annotations

import logging

import numpy as np
from flwr.app.message_type import MessageType
from flwr.common import EvaluateIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import Grid

from common.evaluation.site_evaluation import read_heads_report
from server.site_exchanges import (
    _ask_every_node,
)

log = logging.getLogger("flwr")


def _evaluate_all(
    grid: Grid, arrays: list[np.ndarray], config: dict, timeout: float
) -> dict:
    """Evaluate messages to every node; only external sites reply, each with its
    own metrics as aggregates (a lone site's histogram cannot hide in a sum)."""
    ins = EvaluateIns(ndarrays_to_parameters(arrays), dict(config))
    out = {}
    for reply in _ask_every_node(
        grid,
        lambda: compat.evaluateins_to_recorddict(ins, True),
        MessageType.EVALUATE,
        timeout,
    ):
        # reports hold lists, which legacy EvaluateRes cannot: read the record
        metrics = reply.content.config_records["evaluateres.metrics"]
        if metrics:  # training sites answer empty: theirs went through SecAgg+
            out[reply.metadata.src_node_id] = dict(metrics)
    return out


def _external_split(reports: dict, kinds: tuple[str, ...]) -> tuple[dict | None, dict]:
    """Per head, the external split's metrics and coarse histograms from the one
    external site's report, and its paired differences model minus baseline;
    (None, {}) for a federation without an external site."""
    if not reports:
        return None, {}
    if len(reports) > 1:
        raise RuntimeError(
            f"{len(reports)} external sites answered (nodes {sorted(reports)}); "
            "one external site per run is supported: their metrics cannot be "
            "pooled without their scores"
        )
    ((node, record),) = reports.items()
    try:
        return read_heads_report(record, kinds)
    except ValueError as err:
        raise RuntimeError(f"external site (node {node}): {err}") from err
