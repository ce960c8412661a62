"""The `fedbigbigan` command."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import tomllib

from common.config import RunConfig
from simulations.model_cli import add_model_commands, run_model_command

MODEL_COMMANDS = ("presets", "train-central", "extract")


def _default_config() -> RunConfig:
    """pyproject's run config when run from a checkout, else the typed defaults."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        from flwr.common.config import flatten_dict

        table = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
        return RunConfig.from_flat(flatten_dict(table))
    return RunConfig()


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        value = tomllib.loads(f"v = {raw}")["v"] if raw else ""
        out[key.strip()] = value
    return out


def _hub_inspect(module: str, preset: str) -> int:
    """Print the module's variables, variable kind, signatures and E mapping."""
    import sys

    from common.bigbigan import build_encoder
    from common.config import get_preset
    from common.hub import HubUnavailableError, describe_module, resolve_module

    try:  # before building the encoder, so a bad handle fails at once
        path = resolve_module(module)
    except HubUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe_module(path, build_encoder(get_preset(preset))))
    return 0


def _add_run_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-config",
        nargs="*",
        default=[],
        help="overrides like gan-rounds=2 preset='tiny'",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedbigbigan")
    sub = parser.add_subparsers(dest="command", required=True)
    ph = sub.add_parser("phantoms", help="write the synthetic two-hospital study")
    ph.add_argument("--out", type=Path, required=True)
    ph.add_argument("--scale", type=float, default=1.0)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--slices", type=int, default=6)
    sim = sub.add_parser("simulate", help="run the federated study in simulation")
    sim.add_argument("--out", type=Path, required=True)
    sim.add_argument("--scale", type=float, default=1.0)
    sim.add_argument("--slices", type=int, default=6)
    sim.add_argument(
        "--run-config",
        nargs="*",
        default=[],
        help="overrides like gan-rounds=2 preset='tiny'",
    )
    hub = sub.add_parser(
        "hub-inspect", help="list a BigBiGAN TF Hub module and how it maps onto E"
    )
    hub.add_argument("module", help="TF Hub handle or local module directory")
    hub.add_argument("--preset", default="paper", help="our preset to map into")
    add_model_commands(sub, _add_run_config)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.command in MODEL_COMMANDS:
        overrides = _parse_overrides(getattr(args, "run_config", []))
        flat = {**_default_config().to_flat(), **overrides}
        return run_model_command(args, RunConfig.from_flat(flat))
    if args.command == "hub-inspect":
        return _hub_inspect(args.module, args.preset)
    if args.command == "phantoms":
        from simulations.phantoms import write_study

        for name, path in write_study(
            args.out, args.scale, args.seed, args.slices
        ).items():
            print(f"{name}: {path}")
        return 0
    flat = {**_default_config().to_flat(), **_parse_overrides(args.run_config)}
    from simulations.simulate import simulate

    metrics = simulate(args.out, RunConfig.from_flat(flat), args.scale, args.slices)
    for split, m in metrics["splits"].items():
        print(
            f"{split:9s} AUC {m['auc']:.3f}  sens {m['sensitivity']:.2f}  "
            f"spec {m['specificity']:.2f}  patients {m['n_patients']}"
        )
    print(f"run directory: {args.out}")
    return 0
