"""N successive BigBiGAN training messages at one phantom site: a fresh process
per message doing the work itself (what Flower 1.42's ClientApp does today)
against a fresh process per message handing it to a warm `fedbigbigan
site-worker` (issue 24). Prints each message's wall time, the totals and their
ratio, and whether both give the same updates bit for bit (`--check-fresh`:
whether two fresh runs do, which is what TensorFlow's CPU kernels allow).

    python benchmarks/bench_worker.py --messages 4 --preset tiny
    python benchmarks/bench_worker.py --messages 4 --preset small

Both modes start one Python process per message (`client.client_app`'s
`HospitalClient.fit`, as the SuperNode's ClientApp process calls it), from the
same ingest cache (written once before timing), so the difference is what a
warm worker keeps: TensorFlow's import, the model's build and traced step, the
site's slices. Flower's own process start and message transport are in
neither; `benchmarks/bench_round.py` and the deployment tests measure those.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# one message in its own process: what the SuperNode's ClientApp process does
CHILD = """
import json, sys
import numpy as np
from client.client_app import HospitalClient
node, config, params, out = sys.argv[1:]
with np.load(params) as f:
    weights = [f[k] for k in f.files]
arrays, n, metrics = HospitalClient(json.loads(node)).fit(weights, json.loads(config))
np.savez(out, *arrays)
print(json.dumps({k: float(v) for k, v in metrics.items()}))
"""


def one_message(node: dict, config: dict, weights: list, folder: Path) -> tuple:
    """Wall seconds of one message in a fresh process, its arrays and metrics."""
    params, out = folder / "params.npz", folder / "out.npz"
    np.savez(params, *weights)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(node), json.dumps(config)]
        + [str(params), str(out)],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"message failed: {done.stderr[-2000:]}")
    with np.load(out) as f:
        arrays = [f[k] for k in f.files]
    return wall, arrays, json.loads(done.stdout.strip().splitlines()[-1])


def messages(node: dict, flat: dict, weights: list, n: int, folder: Path) -> list:
    """Rounds 1..n, each from the previous round's result (as the server sends)."""
    rows = []
    for rnd in range(1, n + 1):
        config = {**flat, "phase": "gan", "server-round": rnd}
        wall, delta, metrics = one_message(node, config, weights, folder)
        rows.append((wall, delta, metrics))
        weights = [w + d for w, d in zip(weights, delta, strict=True)]
        print(
            f"  round {rnd}: {wall:6.1f} s (the site's own {metrics['seconds']:.1f} s)"
        )
    return rows


def start_worker(node: dict) -> tuple[subprocess.Popen, float]:
    """A site worker for the node; returns it and its seconds until it answers."""
    from client.worker_protocol import ping

    text = " ".join(f"{k}={json.dumps(v)}" for k, v in node.items())
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "common.commands", "site-worker", "--node-config", text],
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            ping(Path(node["site-worker-socket"]))
            return proc, time.perf_counter() - started
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the site worker exited") from None
            time.sleep(0.2)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="fbw-bench-"))  # short: a socket path
    try:
        bench(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench(root: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4, help="successive rounds")
    parser.add_argument("--preset", default="tiny", help="model preset")
    parser.add_argument("--scale", type=float, default=0.15, help="phantom scale")
    parser.add_argument("--slices", type=int, default=2, help="slices per patient")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument(
        "--check-fresh",
        action="store_true",
        help="also run the fresh processes a second time: are they identical?",
    )
    args = parser.parse_args()

    from client.site import resolve_site, site_data
    from common.config import RunConfig
    from common.model.checkpoint import initial_model
    from simulations.phantoms.dicom_writer import write_sites
    from simulations.phantoms.profiles import paper_sites

    site = next(
        iter(
            write_sites(
                root / "data", paper_sites(args.scale)[:1], 0, args.slices
            ).values()
        )
    )
    run = RunConfig.from_flat(
        {"preset": args.preset, "local-epochs": args.local_epochs}
    )
    node = {"data-dir": str(site), "role": "train", "cache-dir": str(root / "cache")}
    data = site_data(resolve_site(node, run), run)  # the ingest cache, once
    weights = initial_model(run).get_weights()
    print(
        f"{site.name}: {len(data['train'])} training slices, preset {args.preset}, "
        f"{sum(w.size for w in weights) / 1e6:.2f}M values; cpus {os.cpu_count()}"
    )
    flat = {**run.to_flat(), "head-clip": 1e4}

    print("fresh process per message, working itself:")
    fresh = messages(node, {**flat, "run-token": "f0"}, weights, args.messages, root)
    node_w = {**node, "site-worker-socket": str(root / "w.sock")}
    worker, startup = start_worker(node_w)
    print(
        f"fresh process per message, handing it to the warm worker "
        f"(started once: {startup:.1f} s until it answered):"
    )
    try:
        warm = messages(
            node_w, {**flat, "run-token": "a0"}, weights, args.messages, root
        )
    finally:
        worker.terminate()
        worker.wait()
    same = [
        [a.tobytes() for a in f[1]] == [b.tobytes() for b in w[1]]
        for f, w in zip(fresh, warm, strict=True)
    ]
    total_f, total_w = sum(r[0] for r in fresh), sum(r[0] for r in warm)
    later_f = sum(r[0] for r in fresh[1:])
    later_w = sum(r[0] for r in warm[1:])
    # where TensorFlow's CPU kernels are not deterministic (larger presets and
    # batches) two fresh processes differ too: compare with --check-fresh
    print(f"worker vs fresh, updates bit-identical per message: {same}")
    if args.check_fresh:
        print("fresh process per message, again:")
        again = messages(
            node, {**flat, "run-token": "f1"}, weights, args.messages, root
        )
        twice = [
            [a.tobytes() for a in f[1]] == [b.tobytes() for b in g[1]]
            for f, g in zip(fresh, again, strict=True)
        ]
        print(f"fresh vs fresh, updates bit-identical per message: {twice}")
    print(
        f"{args.messages} messages: fresh {total_f:.1f} s, through the worker "
        f"{total_w:.1f} s: {total_f / total_w:.1f}x"
    )
    if args.messages > 1:
        print(
            f"after the first: fresh {later_f / (args.messages - 1):.1f} s per "
            f"message, worker {later_w / (args.messages - 1):.1f} s: "
            f"{later_f / later_w:.1f}x"
        )


if __name__ == "__main__":
    main()
