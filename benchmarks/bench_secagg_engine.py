"""Secure aggregation cost in Flower's Simulation Engine: a round of our
protocol and of SecAgg+ against a plain FedAvg round, with Ray actors as sites.

`bench_secagg.py` measures the protocols in one process with no transport;
here every message goes through the Simulation Engine (a Ray actor per site,
messages through the in-memory SuperLink state), so the four stages' round
trips cost what they cost in a simulated study. Sites return a fixed update
(no training to hide behind). One simulation per protocol; the rounds after
the first (which starts the actors) are timed inside the ServerApp.

    python benchmarks/bench_secagg_engine.py --params 1e6 1e7 --clients 3 5 10
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np  # noqa: E402
from bench_secagg import (  # noqa: E402  (this folder)
    CLIP,
    NAMED_SIZES,
    client_app,
    plain_round,
    secure_round,
    shapes,
)
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.server.workflow import SecAggPlusWorkflow  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from client.secure_agg_mod import secure_agg_mod  # noqa: E402
from server.secure_agg_workflow import SecureAggWorkflow  # noqa: E402

MODS = {"plain": None, "secagg+": secaggplus_mod, "ours": secure_agg_mod}


def one_round(name: str, grid, weights: list[np.ndarray]) -> list[np.ndarray]:
    if name == "plain":
        return plain_round(grid, weights)
    workflow_class = SecAggPlusWorkflow if name == "secagg+" else SecureAggWorkflow
    workflow = workflow_class(
        1.0, 0.67, max_weight=100.0, clipping_range=CLIP, timeout=None
    )
    return secure_round(grid, weights, workflow)


def simulate(name: str, n: int, total: int, rounds: int) -> list[float]:
    """Round wall times of `name` with `n` simulated sites (first round dropped)."""
    times: list[float] = []
    server = ServerApp()

    @server.main()
    def _main(grid, context):
        while len(list(grid.get_node_ids())) < n:
            time.sleep(0.1)
        weights = [np.zeros(s, np.float32) for s in shapes(total)]
        for _ in range(rounds + 1):
            start = time.perf_counter()
            one_round(name, grid, weights)
            times.append(time.perf_counter() - start)

    run_simulation(
        server_app=server,
        client_app=client_app(total, MODS[name]),
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", nargs="+", default=["1e6", "1e7"])
    parser.add_argument("--clients", nargs="+", type=int, default=[3, 5, 10])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds")
    parser.add_argument("--skip-stock", action="store_true")
    args = parser.parse_args()
    names = ["plain", "ours"] + ([] if args.skip_stock else ["secagg+"])
    for p in args.params:
        total = NAMED_SIZES.get(p) or int(float(p))
        for n in args.clients:
            best = {name: min(simulate(name, n, total, args.rounds)) for name in names}
            line = f"{total:>11,d} values, {n:2d} sites: plain {best['plain']:.2f} s"
            for name in names[1:]:
                line += (
                    f", {name} {best[name]:.2f} s ({best[name] / best['plain']:.2f}x)"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
