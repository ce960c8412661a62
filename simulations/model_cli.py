"""A researcher's `fedbigbigan presets | train-central`: the model's own
commands (entry points in pyproject.toml), and the options the researcher's
commands share."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

from common.commands import Command, add_run_config, print_error, run_config
from common.config import PRESETS, RunConfig
from server.run_dir import RunDirError


def add_slice_choice(parser: argparse.ArgumentParser) -> None:
    """`--slice-choice` of the commands that write the phantom study."""
    parser.add_argument(
        "--slice-choice",
        choices=("even", "findings"),  # simulations.phantoms.SLICE_CHOICES
        default="even",
        help="the phantom's slices: spread over the lungs, or where each "
        "patient's findings are (the study's choice)",
    )


def scale(text: str) -> float:
    """`--scale`: a finite number > 0 (the share of the study's patients)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def count(text: str) -> int:
    """`--slices`: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def reporting_run_dir_errors(run: Callable[[argparse.Namespace], int]):
    """`run` with a run directory's refusal (RunDirError) printed as an error
    line and exit status 2, not a traceback."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except RunDirError as err:
            print_error(err)
            return 2

    return guarded


def _train_central_arguments(central: argparse.ArgumentParser) -> None:
    central.add_argument(
        "--out", type=Path, required=True, help="folder of the run (data, model)"
    )
    central.add_argument(
        "--scenario",
        default=None,
        help="a built-in scenario (fedbigbigan scenarios) or a .toml file, as "
        "simulate takes it (e.g. real-images)",
    )
    central.add_argument(
        "--site-dir",
        type=Path,
        action="append",
        default=[],
        help="a training site's folder (images or DICOM with labels.csv), instead "
        "of a scenario; repeat for more sites",
    )
    central.add_argument(
        "--external-dir",
        type=Path,
        action="append",
        default=[],
        help="a held-out site's folder, with --site-dir",
    )
    central.add_argument(
        "--scenario-set",
        nargs="*",
        default=[],
        help="scenario settings, e.g. images.root=DIR images.manifest=FILE.csv",
    )
    central.add_argument(
        "--scale", type=scale, default=1.0, help="phantom study size (1.0: full)"
    )
    central.add_argument(
        "--slices", type=count, default=6, help="slices per phantom patient"
    )
    add_slice_choice(central)
    central.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (only its own files are removed)",
    )
    central.add_argument(
        "--probe-every",
        type=int,
        default=0,
        metavar="N",
        help="also run the cross-validated probe every N epochs (0: only at the end)",
    )
    central.add_argument(
        "--supervised",
        action="store_true",
        help="train E on the labels instead (the same architecture and budget): "
        "the supervised ceiling the self-supervised probes are read against",
    )
    add_run_config(central)


def _presets() -> int:
    from common.model.bigbigan import (
        build_discriminator,
        build_encoder,
        build_generator,
    )

    for name, preset in PRESETS.items():
        counts = [
            build(preset).count_params() / 1e6
            for build in (build_encoder, build_generator, build_discriminator)
        ]
        print(
            f"{name:6s} E {preset.image_size}px {counts[0]:7.2f} M   "
            f"G/D {preset.gd_size}px {counts[1]:7.2f} M / {counts[2]:7.2f} M   "
            f"total {sum(counts):7.2f} M"
        )
    return 0


def _train_central(args: argparse.Namespace) -> int:
    # refused before the run directory is claimed: nothing written for a typo
    if args.site_dir and (args.scenario or args.scenario_set):
        args.usage_error("--site-dir and --scenario: give one of them")
    if args.external_dir and not args.site_dir:
        args.usage_error("--external-dir needs at least one --site-dir")
    config = run_config(args)
    from server.run_dir import CENTRAL_FILES, CENTRAL_FOLDERS, claim_run_dir
    from simulations.phantoms import write_study

    claim_run_dir(
        args.out,
        resume=False,
        overwrite=args.overwrite,
        files=CENTRAL_FILES,
        folders=CENTRAL_FOLDERS,
    )
    data = args.out / "data"
    if args.site_dir or args.external_dir:
        return _central_run(args, _site_dirs_config(args, config, data))
    if args.scenario or args.scenario_set:
        return _central_run(args, _scenario_config(args, config, data))
    recipe = {
        "scale": args.scale,
        "seed": config.seed,
        "slices": args.slices,
        "slice_choice": args.slice_choice,
    }
    recipe_file = args.out / "phantom.json"
    if (data / "hospital_b" / "labels.csv").exists():
        # an earlier run's study: reuse it only if it is the one asked for
        written = (
            json.loads(recipe_file.read_text())
            if recipe_file.exists()
            else {**recipe, "slice_choice": "even"}  # written before the option
        )
        if written != recipe:
            raise SystemExit(
                f"{data} holds another phantom study ({written}); asked for "
                f"{recipe}: use a new --out"
            )
    else:
        write_study(data, args.scale, config.seed, args.slices, args.slice_choice)
        recipe_file.write_text(json.dumps(recipe))
    # the ingest caches go under --out too, not under the working directory
    config = dataclasses.replace(
        config, sim_data_root=str(data.resolve()), out_dir=str(args.out.resolve())
    )
    return _central_run(args, config)


def _scenario_config(args: argparse.Namespace, config: RunConfig, data: Path):
    """The scenario's sites written under `data` (as simulate writes them) and
    checked (`simulations.site_checks`); the config that points at them."""
    from simulations.scenarios import (
        ScenarioError,
        build_scenario,
        load_scenario,
        parse_override,
    )

    try:
        settings: dict = {}
        for item in args.scenario_set:
            _merge(settings, parse_override(item))
        scenario = load_scenario(args.scenario or "paper", settings)
        sim_sites = build_scenario(
            scenario, data, args.scale, config.seed, args.slices, args.slice_choice
        )
        return _checked_sites(args, config, data, sim_sites)
    except ScenarioError as err:
        raise SystemExit(_error_lines(err)) from None


def _site_dirs_config(args: argparse.Namespace, config: RunConfig, data: Path):
    """The --site-dir folders linked under `data` and checked as simulate's
    sites are; the config that points at them."""
    from simulations.site_dirs import SiteDirError, link_site_dirs

    try:
        sim_sites = link_site_dirs(args.site_dir, args.external_dir, data)
    except SiteDirError as err:
        raise SystemExit(_error_lines(err)) from None
    return _checked_sites(args, config, data, sim_sites)


def _checked_sites(
    args: argparse.Namespace, config: RunConfig, data: Path, sim_sites: str
) -> RunConfig:
    """The config pointing at the sites under `data` (caches under --out),
    after simulate's site checks."""
    from simulations.site_checks import SiteCheckError, check_sites

    config = dataclasses.replace(
        config,
        sim_data_root=str(data.resolve()),
        out_dir=str(args.out.resolve()),
        sim_sites=sim_sites,
    )
    try:
        check_sites(config)
    except SiteCheckError as err:
        raise SystemExit(_error_lines(err)) from None
    return config


def _error_lines(err: Exception) -> str:
    """One `error:` line per line of the error's message."""
    return "\n".join(f"error: {line}" for line in str(err).splitlines())


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _central_run(args: argparse.Namespace, config: RunConfig) -> int:
    """Train on the pooled sites of `config` and print the probes' AUCs."""
    from simulations.central import train_central

    metrics = train_central(
        args.out, config, probe_every=args.probe_every, supervised=args.supervised
    )
    for kind in ("probe_random", "probe_trained"):
        for split, m in metrics[kind].items():
            low, high = m["ci"]
            print(
                f"{kind:13s} {split:11s} AUC {m['auc']:.3f} "
                f"[{low:.3f}, {high:.3f}]  patients {m['n_patients']}"
            )
    for name, cv in metrics["probe_cv"].items():
        for kind in ("random", "trained"):
            m = cv[kind]
            low, high = m["ci"]
            print(
                f"cv {name:12s} {kind:7s} AUC {m['auc']:.3f} [{low:.3f}, {high:.3f}]"
                f"  patients {m['n_patients']}"
            )
        diff = cv["difference"]
        low, high = diff["ci"]
        print(
            f"cv {name:12s} trained - random (paired DeLong): "
            f"{diff['difference']:+.3f} [{low:+.3f}, {high:+.3f}]  p = {diff['p']:.3g}"
        )
    if "generator_spread" in metrics:
        spread = metrics["generator_spread"]
        print(
            f"generator spread (pixel SD across z): untrained {spread['random']:.3f}, "
            f"trained {spread['trained']:.3f}; real slices {spread['real']:.3f}"
        )
    print(f"run directory: {args.out}")
    return 0


PRESETS_COMMAND = Command(
    "print each model preset's parameter counts",
    lambda parser: None,
    lambda args: _presets(),
)
TRAIN_CENTRAL = Command(
    "train the same model on the pooled data of a scenario's training "
    "sites (the federated reference; default: the paper's phantom study)",
    _train_central_arguments,
    reporting_run_dir_errors(_train_central),
)
