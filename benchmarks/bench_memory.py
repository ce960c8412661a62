"""Peak memory of a client node during one BigBiGAN round, per preset.

Each preset runs in a fresh process that does what a training site's ClientApp
does in a round: build the model, take the global federated weights, train
`--steps` batches (`client.client_app._gan_round`, the real round function),
then quantise and mask the update as our secure aggregation does for three
sites. The process's peak RSS (ru_maxrss) is read after each stage, and set
against the float32 size of the federated weights, the figure a hospital sizes
its node by.

    python benchmarks/bench_memory.py --presets tiny small paper --batch 16

On a GPU node the model's activations live in device memory instead; the
host still holds the weights, the update and its masked copy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one_round(preset: str, batch: int, steps: int) -> dict:
    """A site's round at `preset` in this process; peak RSS after each stage."""
    import numpy as np

    from client.client_app import _gan_round, _model_and_initial
    from client.site import Site
    from common.config import RunConfig
    from common.model.dataset import SliceSet
    from common.model.model_parts import federated_indices, select
    from common.secure_agg.keys import new_seed
    from common.secure_agg.masking import mask
    from common.secure_agg.quantize import FixedPoint

    stages = {"imports": peak_mb()}
    run = RunConfig.from_flat(
        {"preset": preset, "batch-size": batch, "local-epochs": 1}
    )
    model, initial = _model_and_initial(run)
    shared = federated_indices(model, run.federated_parts, run.strategy)
    parameters = [w.copy() for w in select(initial, shared)]  # as received
    stages["model"] = peak_mb()

    size = run.model.image_size
    rng = np.random.default_rng(0)
    n = batch * steps
    train = SliceSet(
        rng.uniform(-1, 1, (n, size, size, 3)).astype("float32"),
        np.arange(n) % 2,
        np.arange(n),
    )
    with tempfile.TemporaryDirectory() as cache:
        site = Site("bench", Path(cache), "train", cache=Path(cache))
        config = {"server-round": 1, "run-token": "0"}
        started = time.perf_counter()
        delta, _, _ = _gan_round(run, site, train, parameters, config)
        seconds = time.perf_counter() - started
    stages["train"] = peak_mb()

    values = sum(d.size for d in delta)
    fixed = FixedPoint(run.secagg.delta_clip, 3)
    vector = np.empty(values, np.uint32)
    offset = 0
    for d in delta:
        fixed.encode_into(d, vector[offset : offset + d.size], rng)
        offset += d.size
    mask(vector, 0, new_seed(), {1: new_seed(), 2: new_seed()})
    stages["secure"] = peak_mb()
    return {
        "preset": preset,
        "batch": batch,
        "steps": steps,
        "round_seconds": seconds,
        "federated_mb": 4 * values / 2**20,
        "peak_mb": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_round(args.child, args.batch, args.steps)))
        return
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}" + os.environ.get("PYTHONPATH", ""),
    }
    print(
        f"{'preset':7s} {'fed. MB':>8s} {'round s':>8s}  peak RSS MB after: "
        "imports / model / train / secure   peak / fed."
    )
    for preset in args.presets:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                preset,
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        p = r["peak_mb"]
        print(
            f"{preset:7s} {r['federated_mb']:8.1f} {r['round_seconds']:8.1f}  "
            f"{p['imports']:8.0f} / {p['model']:6.0f} / {p['train']:6.0f} / "
            f"{p['secure']:6.0f}"
            f"   {p['secure'] / r['federated_mb']:6.1f}x"
        )


if __name__ == "__main__":
    main()
