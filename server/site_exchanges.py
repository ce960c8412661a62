"""Exchanges with the sites: node queries, one secure round, its wire figures."""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import Message
from flwr.common import GetPropertiesIns, ndarrays_to_parameters
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from common.config import RunConfig
from common.secure_agg.quantize import FixedPoint
from server.aggregate_checks import check_aggregate, check_declared
from server.roster import claim_of, guarded
from server.secure_agg_round import KeysAhead
from server.secure_agg_workflow import SecureAggWorkflow
from server.timing import round_timing

log = logging.getLogger("flwr")


def _wait_for_nodes(grid: Grid, expected: int, timeout: float) -> None:
    """Wait until the roster's nodes are connected, or stop with a clear error."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(list(grid.get_node_ids()))} of {expected} sites connected "
                f"within {timeout:.0f}s"
            )
        time.sleep(1.0)


def _ask_every_node(
    grid: Grid, make_content, message_type: str, timeout: float
) -> list[Message]:
    """Send one message to every node and wait at most `timeout` seconds; a node
    that errs or stays silent stops the run, named (no waiting forever)."""
    messages = [
        Message(content=make_content(), dst_node_id=n, message_type=message_type)
        for n in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error}")
    silent = {m.metadata.dst_node_id for m in messages} - {
        r.metadata.src_node_id for r in replies
    }
    if silent:
        raise RuntimeError(
            f"node(s) {sorted(silent)} did not answer a {message_type} message "
            f"within secagg-timeout = {timeout:.0f} s"
        )
    return replies


def _query_roles(
    grid: Grid,
    flat: dict,
    timeout: float,
    details: dict | None = None,
    claims: dict | None = None,
) -> dict[int, tuple[str, int]]:
    """Ask each node its role (train/external) and training-set size; the rest
    of each reply (class counts, shortcut AUC) goes into `details` by node, and
    its signed claim of that size (for the roster) into `claims`."""
    ins = GetPropertiesIns(dict(flat))
    roles = {}
    for reply in _ask_every_node(
        grid,
        lambda: compat.getpropertiesins_to_recorddict(ins),
        MessageTypeLegacy.GET_PROPERTIES,
        timeout,
    ):
        props = compat.recorddict_to_getpropertiesres(reply.content).properties
        # n_train as sent: `admit_sites` refuses what is not a usable count
        roles[reply.metadata.src_node_id] = (str(props["role"]), props["n_train"])
        if details is not None:
            details[reply.metadata.src_node_id] = dict(props)
        if claims is not None:
            claims[reply.metadata.src_node_id] = claim_of(reply.content)
    log.info("sites: %s", {n: r for n, (r, _) in roles.items()})
    return roles


def quantisation_step(config: RunConfig, clip: float, n_sites: int) -> float:
    """One site's quantisation step for values clipped to +-clip under the run's
    protocol: SecAgg+ splits [-clip, clip] into 2**quantization-bits levels;
    ours keeps headroom for the sum of `n_sites` in 32 bits."""
    if config.secure_aggregation == "fedbigbigan":
        return FixedPoint(clip, max(n_sites, 1)).step
    return 2 * clip / 2**config.secagg.quantization_bits


def _workflow(
    config: RunConfig,
    clip: float,
    max_weight: float,
    lanes: int = 32,
    tensor_clips: list[float] | None = None,
    keys_ahead: KeysAhead | None = None,
):
    """The secure round's workflow for the run's protocol (same legacy use);
    16-bit lanes with `tensor_clips` are ours only (config validation), and so
    are `keys_ahead` (used when `secagg-keys-ahead` is on)."""
    if config.secure_aggregation == "fedbigbigan":
        # precision follows from the number of sites: no quantization range
        return SecureAggWorkflow(
            config.secagg.num_shares,
            config.secagg.reconstruction_threshold,
            max_weight=float(max_weight),
            clipping_range=float(clip),
            timeout=config.secagg.timeout,
            lane_bits=lanes,
            tensor_clips=tensor_clips if lanes == 16 else None,
            keys_ahead=keys_ahead if config.secagg.keys_ahead else None,
        )
    if lanes != 32:
        raise ValueError("16-bit lanes need secure-aggregation = 'fedbigbigan'")
    return SecAggPlusWorkflow(
        num_shares=config.secagg.num_shares,
        reconstruction_threshold=config.secagg.reconstruction_threshold,
        max_weight=float(max_weight),
        clipping_range=float(clip),
        quantization_range=2**config.secagg.quantization_bits,
        timeout=config.secagg.timeout,
    )


def _secure_round(
    grid, legacy, rnd, weights, config, clip, max_weight, lanes=32, tensor_clips=None
):
    """One secure round (SecAgg+ or ours, see `secure-aggregation`) over the
    training sites; returns the weighted mean. Ours also appends the round's
    wire figures (bytes per site each way, lanes, clipped values) to
    `legacy.strategy.wire`."""
    legacy.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND] = rnd
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(weights), keep_input=True
    )
    legacy.strategy.aggregate = None
    legacy.strategy.declared = {}
    workflow = _workflow(
        config,
        clip,
        max_weight,
        lanes,
        tensor_clips,
        getattr(legacy.strategy, "keys_ahead", None),
    )
    started = time.monotonic()
    workflow(guarded(grid, legacy, rnd), legacy)  # the roster's checks, if any
    stats = getattr(workflow, "last_stats", None)  # SecAgg+ has none
    if legacy.strategy.aggregate is not None and stats is not None:
        legacy.strategy.wire.append(
            wire_figures(stats, rnd, str(legacy.strategy.config.get("phase")), weights)
        )
    if legacy.strategy.aggregate is not None:
        legacy.strategy.timings.append(
            round_timing(
                str(legacy.strategy.config.get("phase")),
                rnd,
                time.monotonic() - started,
                legacy.strategy.site_metrics,
                # SecAgg+: four exchanges a round, always; ours says
                len(stats.stages) if stats is not None else 4,
            )
        )
    halted = getattr(workflow, "last_error", None)  # ours says why
    if legacy.strategy.aggregate is None and halted:
        raise RuntimeError(
            f"round {rnd}: secure aggregation ({config.secure_aggregation}) did "
            f"not complete: {halted}. The last completed round is in "
            "checkpoint.npz: fix the sites and resume."
        )
    if legacy.strategy.aggregate is None:
        raise RuntimeError(
            f"round {rnd}: secure aggregation ({config.secure_aggregation}) did "
            "not complete: fewer training sites answered than it needs to unmask "
            "the sum, or a site refused its part (reconstruction "
            f"threshold {config.secagg.reconstruction_threshold} of the sites, at "
            f"least 2) within secagg-timeout = {config.secagg.timeout:.0f} s; "
            "see the log for the sites that dropped. The last completed round is "
            "in checkpoint.npz: fix the sites and resume."
        )
    # what the server can check of a sum it cannot see into (AggregateRejected
    # stops the run before the round is applied or checkpointed)
    check_declared(legacy.strategy.declared, max_weight, rnd)
    check_aggregate(legacy.strategy.aggregate, clip, rnd, tensor_clips)
    return legacy.strategy.aggregate


def wire_figures(stats, rnd: int, phase: str, sent: list[np.ndarray]) -> dict:
    """One round of ours, as payload reports it: measured bytes per site each
    way (all four stages: keys, shares, arrays, headers), and their ratio to
    the float32 size of the arrays the server sent."""
    f32 = 4 * sum(int(np.asarray(a).size) for a in sent)
    down = sum(stats.bytes_down.values()) / max(stats.asked, 1)
    up = sum(stats.bytes_up.values()) / max(stats.uploaded, 1)
    return {
        "round": rnd,
        "phase": phase,
        "lane_bits": stats.lane_bits,
        "down_dtype": str(np.asarray(sent[0]).dtype) if sent else "float32",
        "down_bytes": round(down),
        "up_bytes": round(up),
        "down_ratio": down / f32 if f32 else 0.0,
        "up_ratio": up / f32 if f32 else 0.0,
        "clipped": stats.clipped,
    }
