"""Where a simulated federated run's time and bytes go, as ratios.

Runs the phantom study in Flower's Simulation Engine (the real ServerApp and
ClientApp) and reads what the run recorded in `metrics.json`:

- federated overhead: (round wall time - the slowest site's own seconds on the
  round) / round wall time, per phase and over the run (goal <= 10% at small);
- bytes per site and round / float32 size of the federated weights;
- peak memory of a client process during the rounds.

    python benchmarks/bench_round.py --preset small --out runs/bench-round
    python benchmarks/bench_round.py --preset tiny --run-config strategy=fedbn

A site's seconds are measured inside its ClientApp (data, model, training),
the wall time at the server around the whole secure round (all four SecAgg+
stages), so the difference is the federation's own cost: protocol stages,
transport, waiting, aggregation. In simulation the ClientApps share this
machine's cores, so sites that train at once slow each other down; that counts
as site work here, not overhead.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def summarise(metrics: dict) -> list[str]:
    """The figures, one line each."""
    timing, payload = metrics["timing"], metrics["payload"]
    lines = []
    by_phase: dict[str, list[dict]] = {}
    for r in timing["rounds"]:
        by_phase.setdefault(r["phase"], []).append(r)
    for phase, rounds in by_phase.items():
        wall = statistics.mean(r["seconds"] for r in rounds)
        work = statistics.mean(r["site_seconds"] for r in rounds)
        lines.append(
            f"{phase:8s} x{len(rounds)}: wall {wall:6.1f} s, slowest site "
            f"{work:6.1f} s, overhead {(wall - work) / wall:5.1%}"
        )
    lines.append(
        f"all secure rounds: wall {timing['wall_seconds']:.1f} s, sites "
        f"{timing['site_seconds']:.1f} s, overhead {timing['overhead']:.1%}"
    )
    float32 = 4 * payload["federated_values"]
    lines.append(
        f"bytes per site and BigBiGAN round: up {payload['up_bytes'] / float32:.2f}x, "
        f"down {payload['down_bytes'] / float32:.2f}x float32 "
        f"({payload['federated_values'] / 1e6:.2f}M values)"
    )
    peak = timing.get("site_peak_rss_mb")
    if peak is not None and math.isfinite(peak):
        lines.append(f"peak memory of a client process: {peak:.0f} MB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-round"))
    parser.add_argument("--scale", type=float, default=0.3)
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--gan-rounds", type=int, default=2)
    parser.add_argument(
        "--run-config", nargs="*", default=[], help="more run config key=value"
    )
    parser.add_argument(
        "--read", action="store_true", help="only summarise OUT/metrics.json"
    )
    args = parser.parse_args()
    if not args.read:
        from common.config import RunConfig
        from simulations.scenarios import parse_override
        from simulations.simulate import simulate

        flat = {"preset": args.preset, "gan-rounds": args.gan_rounds}
        for item in args.run_config:
            flat.update(parse_override(item))
        simulate(args.out, RunConfig.from_flat(flat), args.scale, args.slices)
    metrics = json.loads((args.out / "metrics.json").read_text())
    config = json.loads((args.out / "config.json").read_text())
    print(f"{args.out}: preset {config['preset']}")
    print("\n".join(summarise(metrics)))


if __name__ == "__main__":
    main()
