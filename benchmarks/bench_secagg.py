"""Secure aggregation cost: our protocol (common.secure_agg) and Flower's SecAgg+
against a plain FedAvg round, in one process.

Every round runs on an in-process grid (simulations.loopback): each message is
serialised and parsed (so bytes are real and counted), each node is a ClientApp
call. A node's "training" returns a fixed update, so the ratios are the
protocols' own overhead at its worst (no training time to hide behind); Ray,
polling and process start-up are left out.

    python benchmarks/bench_secagg.py --params 1e6 1e7 --clients 3 5 10
    python benchmarks/bench_secagg.py --params encoder --clients 3   # 75M
    python benchmarks/bench_secagg.py --transport float32 float16 --skip-stock

`--transport float16` adds `ours16`: our protocol with the float16 transport
(server.transport): weights down as float16, updates up in uint16 lanes with
per-array clips set as the server sets them from a round's mean update (here
the true mean, as if the previous round's were the same).

Sizes: `paper` (296M federated values: E, G and D of the paper preset),
`encoder` (its E alone, 74.9M), or a number. Flower's SecAgg+ cannot send the
paper size (its masked int64 vector is one object above 2 GiB).
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import time

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from client.secure_agg_mod import secure_agg_mod
from server.phase_strategy import PhaseStrategy
from server.secure_agg_workflow import SecureAggWorkflow
from server.transport import downcast, next_clips
from simulations.loopback import LoopbackGrid

# federated value counts of the presets (common.config, federated_parts="egd")
NAMED_SIZES = {"paper": 296_226_454, "encoder": 74_900_208, "small": 5_713_116}
CLIP = 4.0
N_ARRAYS = 24  # the update split into this many arrays, like layers


def shapes(total: int) -> list[int]:
    base = total // N_ARRAYS
    return [base] * (N_ARRAYS - 1) + [total - base * (N_ARRAYS - 1)]


_UPDATES: dict[tuple[int, int], list[np.ndarray]] = {}


def update(partition: int, total: int) -> list[np.ndarray]:
    key = (partition, total)
    if key not in _UPDATES:
        rng = np.random.default_rng(partition)
        _UPDATES[key] = [
            rng.normal(0, 0.01, n).astype(np.float32) for n in shapes(total)
        ]
    return _UPDATES[key]


def client_app(total: int, mod=None) -> ClientApp:
    class Site(NumPyClient):
        def __init__(self, partition: int):
            self.partition = partition

        def fit(self, parameters, config):
            return update(self.partition, total), 10 + self.partition, {}

    return ClientApp(
        client_fn=lambda c: Site(int(c.node_config["partition-id"])).to_client(),
        mods=[mod] if mod else [],
    )


def plain_round(grid: LoopbackGrid, weights: list[np.ndarray]) -> list[np.ndarray]:
    """FedAvg: the weights out, the updates back, their weighted mean."""
    ins = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(weights), {}), True)
    messages = [
        Message(
            content=ins, dst_node_id=n, message_type=MessageType.TRAIN, group_id="1"
        )
        for n in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(messages)
    fits = [compat.recorddict_to_fitres(r.content, False) for r in replies]
    total = sum(f.num_examples for f in fits)
    arrays = [parameters_to_ndarrays(f.parameters) for f in fits]
    return [
        sum(
            a[k] * (f.num_examples / total) for a, f in zip(arrays, fits, strict=True)
        ).astype(np.float32)
        for k in range(len(arrays[0]))
    ]


def secure_round(grid: LoopbackGrid, weights, workflow) -> list[np.ndarray]:
    """One legacy-path secure round, as server/server_app.py runs SecAgg+."""
    strategy = PhaseStrategy({int(n) for n in grid.get_node_ids()})
    context = Context(1, 0, {}, RecordDict(), {})
    legacy = LegacyContext(context, ServerConfig(num_rounds=1), strategy=strategy)
    thread, stop, ready = start_update_client_manager_thread(
        grid, legacy.client_manager
    )
    ready.wait()
    try:
        while legacy.client_manager.num_available() < len(list(grid.get_node_ids())):
            time.sleep(0.01)
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {Key.CURRENT_ROUND: 1}
        )
        legacy.state.array_records[MAIN_PARAMS_RECORD] = (
            compat.parameters_to_arrayrecord(
                ndarrays_to_parameters(weights), keep_input=True
            )
        )
        workflow(grid, legacy)
    finally:
        stop.set()
        thread.join()
    if strategy.aggregate is None:
        raise RuntimeError("the secure round did not complete")
    return strategy.aggregate


def mean_update(n: int, total: int) -> list[np.ndarray]:
    """The sites' weighted mean update (weights 10 + partition), float64."""
    weights = [10 + i for i in range(n)]
    return [
        sum(update(i, total)[k].astype(np.float64) * w for i, w in enumerate(weights))
        / sum(weights)
        for k in range(N_ARRAYS)
    ]


def run_once(name: str, grid: LoopbackGrid, weights: list[np.ndarray]):
    """One round of `name`; returns (result, wall s, CPU s, our stage stats)."""
    grid.traffic.reset()
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    stats = None
    if name == "plain":
        result = plain_round(grid, weights)
    elif name == "secagg+":
        workflow = SecAggPlusWorkflow(
            1.0, 0.67, max_weight=100.0, clipping_range=CLIP, timeout=None
        )
        result = secure_round(grid, weights, workflow)
    elif name == "ours16":
        n, total = len(grid.contexts), sum(w.size for w in weights)
        workflow = SecureAggWorkflow(
            1.0,
            0.67,
            max_weight=100.0,
            clipping_range=CLIP,
            timeout=None,
            lane_bits=16,
            tensor_clips=next_clips(mean_update(n, total), CLIP),
        )
        result = secure_round(grid, downcast(weights), workflow)
        stats = workflow.last_stats
    else:
        workflow = SecureAggWorkflow(
            1.0, 0.67, max_weight=100.0, clipping_range=CLIP, timeout=None
        )
        result = secure_round(grid, weights, workflow)
        stats = workflow.last_stats
    return result, time.perf_counter() - wall, time.process_time() - cpu, stats


def measure(names: list[str], n: int, total: int, repeats: int) -> dict:
    """Best of `repeats` rounds per protocol, the protocols interleaved so that
    load from other work on the machine falls on all of them alike."""
    weights = [np.zeros(s, np.float32) for s in shapes(total)]
    mods = {
        "plain": None,
        "secagg+": secaggplus_mod,
        "ours": secure_agg_mod,
        "ours16": secure_agg_mod,
    }
    grids = {name: LoopbackGrid(client_app(total, mods[name]), n) for name in names}
    rows: dict[str, dict] = {}
    for _ in range(repeats):
        for name in names:
            result, wall, cpu, stats = run_once(name, grids[name], weights)
            row = rows.setdefault(name, {"seconds": wall, "cpu": cpu})
            row["seconds"], row["cpu"] = min(row["seconds"], wall), min(row["cpu"], cpu)
            t = grids[name].traffic
            row.update(
                up=sum(t.up.values()) / n / (4 * total),
                down=sum(t.down.values()) / n / (4 * total),
                client_s=t.client_seconds,
                wire_s=t.wire_seconds,
                exchanges=t.exchanges,
                dtype=str(np.asarray(result[-1]).dtype),
                stats=stats,
            )
            expected = mean_update(n, total)
            row["error"] = max(
                float(np.abs(np.asarray(g, np.float64) - e).max())
                for g, e in zip(result, expected, strict=True)
            )
            row["clipped"] = stats.clipped if stats else 0
            del result
    return rows


def parse_size(text: str) -> int:
    return NAMED_SIZES[text] if text in NAMED_SIZES else int(float(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", nargs="+", default=["1e6", "1e7"])
    parser.add_argument("--clients", nargs="+", type=int, default=[3, 5, 10])
    parser.add_argument("--repeats", type=int, default=2, help="best of")
    parser.add_argument(
        "--skip-stock", action="store_true", help="leave out Flower's SecAgg+"
    )
    parser.add_argument(
        "--transport",
        nargs="+",
        choices=["float32", "float16"],
        default=["float32"],
        help="our protocol's transports (float16: the row ours16)",
    )
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    print(
        f"{'values':>11} {'n':>3} {'protocol':>8} {'wall s':>7} {'x plain':>7} "
        f"{'CPU s':>6} {'x plain':>7} {'up/f32':>6} {'down/f32':>8} {'trips':>5} "
        f"{'client s':>8} {'wire s':>6} {'max err':>8} dtype"
    )
    for size in args.params:
        total = parse_size(size)
        for n in args.clients:
            names = ["plain"]
            names += ["ours"] if "float32" in args.transport else []
            names += ["ours16"] if "float16" in args.transport else []
            names += [] if args.skip_stock else ["secagg+"]
            rows = measure(names, n, total, args.repeats)
            _UPDATES.clear()
            plain = rows["plain"]
            for name, row in rows.items():
                print(
                    f"{total:>11,} {n:>3} {name:>8} {row['seconds']:>7.2f} "
                    f"{row['seconds'] / plain['seconds']:>7.2f} {row['cpu']:>6.2f} "
                    f"{row['cpu'] / plain['cpu']:>7.2f} "
                    f"{row['up']:>6.3f} {row['down']:>8.3f} {row['exchanges']:>5} "
                    f"{row['client_s']:>8.2f} {row['wire_s']:>6.2f} "
                    f"{row['error']:>8.1e} {row['dtype']}"
                    + (f" clipped {row['clipped']}" if name == "ours16" else ""),
                    flush=True,
                )
            for name in ("ours", "ours16"):
                if name not in rows:
                    continue
                stats = rows[name]["stats"]
                stages = ", ".join(f"{k} {v:.2f}" for k, v in stats.seconds.items())
                print(
                    f"{'':>16} {name}, server side: stages (incl. clients) {stages}; "
                    f"unmask {stats.unmask_seconds:.2f} s",
                    flush=True,
                )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.1f} GiB")


if __name__ == "__main__":
    main()
