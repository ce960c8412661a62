"""A researcher's `fedbigbigan` commands: simulate (and its sweeps), phantoms,
scenarios, privacy-curve, hub-inspect (entry points in pyproject.toml;
common/commands.py dispatches; presets and train-central: model_cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from common.commands import (
    Command,
    add_run_config,
    default_config,
    parse_overrides,
)
from common.config import RunConfig
from server.run_dir import claim_run_dir
from simulations.model_cli import (
    add_slice_choice,
    count,
    reporting_run_dir_errors,
    scale,
)


def _hub_inspect(module: str, preset: str) -> int:
    """Print the module's variables, variable kind, signatures and E mapping."""
    from common.config import get_preset
    from common.model.bigbigan import build_encoder
    from common.model.hub import HubUnavailableError, describe_module, resolve_module

    try:  # before building the encoder, so a bad handle fails at once
        path = resolve_module(module)
    except HubUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe_module(path, build_encoder(get_preset(preset))))
    return 0


def _merged(a: dict, b: dict) -> dict:
    """`a` with `b`'s nested tables merged in (scenario settings)."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _list_scenarios() -> int:
    from simulations.scenarios import load_scenario, scenario_names

    for name in scenario_names():
        text = " ".join(load_scenario(name).description.split())
        print(f"{name}\n    {text}")
    return 0


def _add_study_size(parser: argparse.ArgumentParser) -> None:
    """--scale and --slices of a phantom study."""
    parser.add_argument(
        "--scale",
        type=scale,
        default=1.0,
        help="patients per site as a fraction of the study's (1.0: 166 at "
        "hospital A, 35 at hospital B)",
    )
    parser.add_argument(
        "--slices", type=count, default=6, help="CT slices written per phantom patient"
    )


def _phantoms_arguments(ph: argparse.ArgumentParser) -> None:
    ph.add_argument("--out", type=Path, required=True, help="folder to write into")
    _add_study_size(ph)
    ph.add_argument("--seed", type=int, default=0, help="draws the phantom patients")
    add_slice_choice(ph)


def _phantoms(args: argparse.Namespace) -> int:
    from simulations.phantoms import write_study

    for name, path in write_study(
        args.out, args.scale, args.seed, args.slices, args.slice_choice
    ).items():
        print(f"{name}: {path}")
    return 0


def _simulate_arguments(sim: argparse.ArgumentParser) -> None:
    sim.add_argument(
        "--out", type=Path, required=True, help="the run directory (data, log, results)"
    )
    _add_study_size(sim)
    add_slice_choice(sim)
    sim.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every library's log on the terminal, and tracebacks (they "
        "are always in RUN_DIR/run.log)",
    )
    sim.add_argument(
        "--scenario",
        default=None,
        help="a built-in scenario (fedbigbigan scenarios) or a .toml file; "
        "default: paper",
    )
    sim.add_argument(
        "--scenario-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="scenario settings, e.g. label-skew.alpha=0.1 images.root=DIR",
    )
    sim.add_argument(
        "--sweep",
        type=Path,
        default=None,
        help="a sweep file (TOML): run its grid of scenarios x strategies x "
        "federated parts x seeds into --out, with sweep.csv and sweep.png",
    )
    sim.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its checkpoint.npz",
    )
    sim.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (only its own files are removed)",
    )
    add_run_config(sim)


def _hub_inspect_arguments(hub: argparse.ArgumentParser) -> None:
    hub.add_argument("module", help="TF Hub handle or local module directory")
    hub.add_argument("--preset", default="paper", help="our preset to map into")


def _privacy_curve_arguments(curve: argparse.ArgumentParser) -> None:
    curve.add_argument("--out", type=Path, required=True, help="folder of the runs")
    curve.add_argument(
        "--noise", default="0,0.5,1,2", help="noise multipliers, comma-separated"
    )
    _add_study_size(curve)
    curve.add_argument("--run-config", nargs="*", default=[], help="overrides")


def _privacy_curve(args: argparse.Namespace) -> int:
    from simulations.privacy_curve import privacy_curve

    flat = {**default_config().to_flat(), **parse_overrides(args.run_config)}
    noises = [float(v) for v in args.noise.split(",") if v.strip()]
    rows = privacy_curve(
        args.out, RunConfig.from_flat(flat), noises, args.scale, args.slices
    )
    for r in rows:
        print(
            f"noise {r['noise_multiplier']:g}: epsilon {r['epsilon']:.3g}  "
            f"external AUC {r['external_auc']:.3f}  "
            f"attack on head {r['head_attack_auc']:.3f}"
        )
    return 0


def _simulate_or_sweep(args: argparse.Namespace) -> int:
    """`fedbigbigan simulate`, or with --sweep its grid of runs."""
    if args.sweep is not None:
        return _sweep(args)
    return _simulate(args)


def _sweep(args: argparse.Namespace) -> int:
    from simulations.scenarios import ScenarioError
    from simulations.sweep import run_sweep

    overrides = parse_overrides(args.run_config)
    try:
        rows = run_sweep(
            args.sweep, args.out, {**default_config().to_flat(), **overrides}
        )
    except ScenarioError as err:
        args.usage_error(str(err))
    print(f"{len(rows)} runs; table: {args.out / 'sweep.csv'}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    """`fedbigbigan simulate`: the run's libraries talk to RUN_DIR/run.log; the
    terminal gets a line per phase and round, then the results."""
    base = default_config().to_flat()
    if args.resume:  # the interrupted run's own config, written when it started
        if not (args.out / "config.json").is_file():
            args.usage_error(
                f"--resume: {args.out} holds no run to resume (no config.json)"
            )
        base = json.loads((args.out / "config.json").read_text())
        base["resume"] = str(args.out.resolve())
    flat = {**base, **parse_overrides(args.run_config)}
    from simulations.run_log import RunLog
    from simulations.scenarios import ScenarioError, load_scenario, parse_override
    from simulations.simulate import simulate
    from simulations.site_checks import SiteCheckError

    try:
        config = RunConfig.from_flat(flat)  # every value checked before anything
        if config.roster_file:  # simulated nodes share one node config: no keys
            args.usage_error(
                "roster-file: a roster needs deployed nodes, each signing with its "
                "own key (node config roster-key); the Simulation Engine has none"
            )
        scenario = None
        if args.scenario or args.scenario_set:
            settings: dict = {}
            for item in args.scenario_set:
                settings = _merged(settings, parse_override(item))
            scenario = load_scenario(args.scenario or "paper", settings)
        claim_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    except ScenarioError as err:
        args.usage_error(str(err))
    with RunLog(args.out, args.verbose) as run:
        run.say(_run_header(args, config, scenario))
        try:
            metrics = simulate(
                args.out,
                config,
                args.scale,
                args.slices,
                None,
                scenario,
                args.slice_choice,
            )
        except (ScenarioError, SiteCheckError) as err:
            for line in str(err).splitlines():
                run.say(f"error: {line}")
            return 2
        except Exception as err:
            if args.verbose:
                raise
            logging.getLogger(__name__).exception("the run stopped")
            run.say(f"error: {err} (the full log: {run.path})")
            return 1
        for line in _results(metrics):
            run.say(line)
        run.say(
            f"run directory: {args.out}  (log: {run.path.name}; "
            f"report: fedbigbigan report {args.out}; "
            f"curves: tensorboard --logdir {args.out})"
        )
    return 0


def _run_header(args: argparse.Namespace, config: RunConfig, scenario) -> str:
    """What is about to run, in one line."""
    name = scenario.name if scenario is not None else "paper"
    protocol = {"secaggplus": "SecAgg+", "fedbigbigan": "our secure aggregation"}
    rounds = config.gan_rounds if config.trains_encoder else 0
    return (
        f"fedbigbigan simulate: scenario {name}, scale {args.scale:g}, "
        f"{config.preset} preset, {rounds} BigBiGAN rounds, "
        f"{config.strategy}, {protocol[config.secure_aggregation]}"
        f"{' (resumed)' if args.resume else ''}"
    )


def _results(metrics: dict) -> list[str]:
    """The final table: each split's patient AUC with its 95% CI, sensitivity
    and specificity at the validation cut-off; then the comparison heads."""
    lines = ["patient-level results (cut-off chosen on validation):"]
    for split, m in metrics["splits"].items():
        low, high = m.get("auc_ci", (float("nan"), float("nan")))
        lines.append(
            f"  {split:9s} AUC {m['auc']:.3f} [{low:.2f}, {high:.2f}]  "
            f"sens {m['sensitivity']:.2f}  spec {m['specificity']:.2f}  "
            f"patients {m['n_patients']}"
        )
    from server.report_sections import baseline_lines
    from server.site_properties import shortcut_lines

    lines.extend(shortcut_lines(metrics))  # one per site, nothing for clean ones
    # the verdicts on the held-out data only (train and val are in the report)
    lines.extend(
        line
        for line in baseline_lines(metrics)
        if not line.startswith(("Training:", "Validation:"))
    )
    comparisons = metrics["comparisons"]["table"]
    targets = list(next(iter(comparisons.values())))
    # numbered columns and a legend: site names are long, a terminal is not
    numbers = [f"[{i}]" for i in range(1, 1 + len(targets))]
    legend = ", ".join(f"{n} {t}" for n, t in zip(numbers, targets, strict=True))
    lines.append("patient AUC by head (rows; not federated unless named) on test data")
    lines.append(f"  {legend}:")
    lines.append(f"  {'':32s}" + "".join(f"{n:>8s}" for n in numbers))
    for head, row in comparisons.items():
        lines.append(
            f"  {head[:32]:32s}" + "".join(f"{row[t]['auc']:8.3f}" for t in targets)
        )
    return lines


SIMULATE = Command(
    "run the federated study in simulation",
    _simulate_arguments,
    reporting_run_dir_errors(_simulate_or_sweep),
    description="Write a scenario's sites (phantom DICOM by default) and run "
    "the federation in Flower's Simulation Engine: BigBiGAN rounds, the "
    "linear head and the evaluation, every update through secure "
    "aggregation. The same run as `flwr run . local-simulation` (README).",
)
PHANTOMS = Command(
    "write the synthetic two-hospital study", _phantoms_arguments, _phantoms
)
SCENARIOS = Command(
    "list the built-in simulation scenarios",
    lambda parser: None,
    lambda args: _list_scenarios(),
)
PRIVACY_CURVE = Command(
    "simulate the study at several DP noise levels: AUC against epsilon",
    _privacy_curve_arguments,
    reporting_run_dir_errors(_privacy_curve),
)
HUB_INSPECT = Command(
    "list a BigBiGAN TF Hub module and how it maps onto E",
    _hub_inspect_arguments,
    lambda args: _hub_inspect(args.module, args.preset),
)
