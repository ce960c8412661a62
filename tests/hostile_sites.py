"""Secure rounds with hostile training sites, in process (no Ray, no SuperLink).

`secure_round(sites, protocol)` runs the ServerApp's own `_secure_round` (and
so its checks) over a `LoopbackGrid` of `sites`: each a `Site` that returns an
update and an example count, optionally edited on the way out by a `tamper`
mod (what a site running modified code could send). No tests in here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD

from client.roster_signing import roster_signing_mod
from client.secure_dispatch_mod import secure_dispatch_mod
from common.config import RunConfig
from server.phase_strategy import PhaseStrategy
from server.server_app import _secure_round
from simulations.loopback import LoopbackGrid

CLIP = 4.0
SHAPES = ((6, 5), (7,))


def honest_update(partition: int) -> list[np.ndarray]:
    """A site's update, well inside +-CLIP."""
    rng = np.random.default_rng(partition)
    return [rng.uniform(-1, 1, s).astype(np.float32) for s in SHAPES]


@dataclass
class Site:
    """One training site: its update and its declared example count."""

    n: float = 100
    update: Callable[[int], list[np.ndarray]] = honest_update
    tamper: Callable | None = None  # a client mod after the protocol's own
    node_config: dict = field(default_factory=dict)  # e.g. roster-key, roster-site


class _Client(NumPyClient):
    def __init__(self, partition: int, site: Site):
        self.partition, self.site = partition, site

    def fit(self, parameters, config):
        return self.site.update(self.partition), self.site.n, {"clipped": 0}


def client_app(sites: list[Site]) -> ClientApp:
    def mods_for(partition: int):
        site = sites[partition]
        return [site.tamper] if site.tamper else []

    def app_call(msg, ctxt):
        partition = int(ctxt.node_config["partition-id"])
        inner = ClientApp(
            client_fn=lambda c: _Client(partition, sites[partition]).to_client(),
            mods=[*mods_for(partition), secure_dispatch_mod, roster_signing_mod],
        )
        return inner(msg, ctxt)

    return app_call


def run_config(protocol: str, **extra) -> RunConfig:
    return RunConfig.from_flat(
        {
            "secure-aggregation": protocol,
            "secagg-delta-clip": CLIP,
            "secagg-reconstruction-threshold": 0.6,
            "secagg-timeout": 30.0,
            **extra,
        }
    )


def secure_round(
    sites: list[Site],
    protocol: str,
    max_weight: float | None = None,
    seed: int = 0,
    roster=None,
    **config,
) -> tuple[list[np.ndarray], PhaseStrategy]:
    """One `_secure_round` of the BigBiGAN phase over `sites`; the mean and
    the strategy (its site metrics and dropped count); with `roster`
    (`server.roster.Roster`) the roster's checks run as in a rostered run."""
    np.random.seed(seed)  # the sites' stochastic rounding: the same each call
    grid = LoopbackGrid(
        client_app(sites),
        len(sites),
        node_config=lambda i: {"partition-id": i, **sites[i].node_config},
    )
    strategy = PhaseStrategy({int(n) for n in grid.get_node_ids()})
    strategy.roster = roster
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    legacy = LegacyContext(context, ServerConfig(num_rounds=1), strategy=strategy)
    for node in grid.get_node_ids():
        legacy.client_manager.register(GridClientProxy(node, grid, 1))
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord()
    cfg = run_config(protocol, **config)
    strategy.config = {"phase": "gan"}
    weights = [np.zeros(s, np.float32) for s in SHAPES]
    if max_weight is None:  # as the ServerApp: the roster's, or the largest n
        max_weight = roster.max_weight if roster else max(s.n for s in sites)
    mean = _secure_round(grid, legacy, 1, weights, cfg, CLIP, max_weight)
    return [np.asarray(m) for m in mean], strategy


def plain_mean(sites: list[Site], keep: list[int] | None = None) -> list[np.ndarray]:
    """The weighted mean the honest sites' updates would give (float64)."""
    keep = list(range(len(sites))) if keep is None else keep
    total = sum(sites[i].n for i in keep)
    return [
        sum(sites[i].n * sites[i].update(i)[k].astype(np.float64) for i in keep) / total
        for k in range(len(SHAPES))
    ]
