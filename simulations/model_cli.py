"""`fedbigbigan presets | train-central | extract`: the model's own commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from common.config import PRESETS, RunConfig


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


def add_model_commands(sub, add_run_config) -> None:
    """Register the commands on the main parser's subparsers."""
    sub.add_parser("presets", help="print each model preset's parameter counts")
    central = sub.add_parser(
        "train-central",
        help="train the same model on the pooled data of a scenario's training "
        "sites (the federated reference; default: the paper's phantom study)",
    )
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
    extract = sub.add_parser(
        "extract", help="write E's features (z_mean, ...) of a site's slices"
    )
    extract.add_argument(
        "--model", type=Path, required=True, help="model.npz or a run directory"
    )
    extract.add_argument(
        "--site-dir", type=Path, required=True, help="site folder with labels.csv"
    )
    extract.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="the site's ingest cache (reused: unchanged files are not decoded)",
    )
    extract.add_argument("--out", type=Path, required=True, help="features.npz")
    extract.add_argument(
        "--batch", type=int, default=32, help="slices per encoder call"
    )
    add_run_config(extract)


def run_model_command(args: argparse.Namespace, config: RunConfig) -> int | None:
    """Run the command if it is one of ours; None otherwise."""
    if args.command == "presets":
        return _presets()
    if args.command == "train-central":
        return _train_central(args, config)
    if args.command == "extract":
        return _extract(args, config)
    return None


def _presets() -> int:
    from common.bigbigan import build_discriminator, build_encoder, build_generator

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


def _train_central(args: argparse.Namespace, config: RunConfig) -> int:
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
    from simulations.site_checks import SiteCheckError, check_sites

    try:
        settings: dict = {}
        for item in args.scenario_set:
            _merge(settings, parse_override(item))
        scenario = load_scenario(args.scenario or "paper", settings)
        sim_sites = build_scenario(
            scenario, data, args.scale, config.seed, args.slices, args.slice_choice
        )
        config = dataclasses.replace(
            config,
            sim_data_root=str(data.resolve()),
            out_dir=str(args.out.resolve()),
            sim_sites=sim_sites,
        )
        check_sites(config)
    except (ScenarioError, SiteCheckError) as err:
        lines = [f"error: {line}" for line in str(err).splitlines()]
        raise SystemExit("\n".join(lines)) from None
    return config


def _site_dirs_config(args: argparse.Namespace, config: RunConfig, data: Path):
    """The --site-dir folders linked under `data` and checked as simulate's
    sites are; the config that points at them."""
    from simulations.site_checks import SiteCheckError, check_sites
    from simulations.site_dirs import SiteDirError, link_site_dirs

    if args.scenario or args.scenario_set:
        raise SystemExit("error: --site-dir and --scenario: give one of them")
    if not args.site_dir:
        raise SystemExit("error: --external-dir needs at least one --site-dir")
    try:
        sim_sites = link_site_dirs(args.site_dir, args.external_dir, data)
        config = dataclasses.replace(
            config,
            sim_data_root=str(data.resolve()),
            out_dir=str(args.out.resolve()),
            sim_sites=sim_sites,
        )
        check_sites(config)
    except (SiteDirError, SiteCheckError) as err:
        lines = [f"error: {line}" for line in str(err).splitlines()]
        raise SystemExit("\n".join(lines)) from None
    return config


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


def recorded_ingest(model: Path, config: RunConfig):
    """A run directory's recorded ingest options (the slices its model was
    trained on: intensity, image crop, ...); else the command's own."""
    recorded = Path(model) / "config.json"
    if not recorded.is_file():
        return config.ingest
    return RunConfig.from_flat(json.loads(recorded.read_text())).ingest


def _extract(args: argparse.Namespace, config: RunConfig) -> int:
    """Features of every slice with patient ids and labels (they stay at the site)."""
    import os

    from client.site import ingest_config
    from common.checkpoint import load_model
    from common.dataset import slices_from_ingest
    from common.ingest import default_cache_dir, ingest_site

    model = load_model(args.model, devices=config.devices, seed=config.seed)
    config = dataclasses.replace(
        config, preset=model.preset.name, ingest=recorded_ingest(args.model, config)
    )
    ingest = ingest_config(config)
    result = ingest_site(
        args.site_dir, None, args.cache or default_cache_dir(args.site_dir), ingest
    )
    patients = list(result.patients)
    slices = slices_from_ingest(patients, ingest.image_size)
    features = model.encode_all(
        slices.images,
        batch=args.batch,
        outputs=("z_mean", "z_stdev", "z_sample", "avepool_feat", "bn_crelu_feat"),
    )
    patient_ids = np.asarray([p.patient_id for p in patients])[slices.patient]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez(
            handle,
            **{k: v.astype(np.float32) for k, v in features.items()},
            patient_id=patient_ids,
            label=slices.labels,
        )
    os.replace(tmp, args.out)
    shapes = json.dumps({k: list(v.shape) for k, v in features.items()})
    print(f"{len(slices)} slices of {len(patients)} patients -> {args.out}")
    print(shapes)
    return 0
