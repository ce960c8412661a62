"""The `fedbigbigan` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import tomllib

from common.config import ConfigError, RunConfig
from server.run_dir import RunDirError, claim_run_dir
from simulations.deploy_cli import (
    DEPLOY_COMMANDS,
    add_deploy_commands,
    run_deploy_command,
)
from simulations.model_cli import (
    add_model_commands,
    add_slice_choice,
    count,
    run_model_command,
    scale,
)

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


def _add_run_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-config",
        nargs="*",
        default=[],
        help="run-config overrides (pyproject.toml [tool.flwr.app.config]), "
        "e.g. gan-rounds=2 preset='tiny'",
    )


def _add_ingest_command(sub) -> None:
    """`fedbigbigan ingest`: a site folder (PACS export) into an ingest cache."""
    from common.ingest.config import (
        INTENSITY_POLICIES,
        SERIES_POLICIES,
        SLICE_POLICIES,
        IngestConfig,
    )

    d = IngestConfig()
    ing = sub.add_parser(
        "ingest", help="read a site folder (DICOM or image folders) into a cache"
    )
    ing.add_argument("--site-dir", type=Path, required=True, help="read-only")
    ing.add_argument(
        "--labels",
        type=Path,
        help="labels CSV: patient_id,label (DICOM); for image files also "
        "file,label with a path relative to the site or a glob (default: "
        "SITE/labels.csv; image folders without one: label folder names)",
    )
    ing.add_argument(
        "--label-map",
        default="",
        help="label words of the CSV, e.g. covid=1,pneumonia=0 (any case; 0/1 "
        "always work)",
    )
    ing.add_argument("--out", type=Path, required=True, help="cache folder")
    ing.add_argument("--strict", action="store_true", help="stop at the first problem")
    ing.add_argument(
        "--image-size", type=int, default=d.image_size, help="cached slice size, px"
    )
    ing.add_argument(
        "--intensity",
        choices=INTENSITY_POLICIES,
        default=d.intensity,
        help="per-image min-max (the paper) or a fixed HU lung window",
    )
    ing.add_argument(
        "--window-center", type=float, default=d.window_center, help="HU, lung-window"
    )
    ing.add_argument(
        "--window-width", type=float, default=d.window_width, help="HU, lung-window"
    )
    ing.add_argument(
        "--slice-policy",
        choices=SLICE_POLICIES,
        default=d.slice_policy,
        help="every slice, lung-bearing slices, or N central ones",
    )
    ing.add_argument(
        "--central-slices",
        type=int,
        default=d.central_slices,
        help="N, with --slice-policy central",
    )
    ing.add_argument(
        "--min-lung-fraction",
        type=float,
        default=d.min_lung_fraction,
        help="lung share of a slice to count as lung-bearing",
    )
    ing.add_argument(
        "--series",
        choices=SERIES_POLICIES,
        default=d.series,
        help="keep one axial CT series per study, or all",
    )
    ing.add_argument(
        "--max-decoded-mb",
        type=int,
        default=d.max_decoded_mb,
        help="refuse a file whose pixels decode to more",
    )
    ing.add_argument(
        "--max-file-mb", type=int, default=d.max_file_mb, help="skip larger files"
    )
    ing.add_argument(
        "--workers", type=int, default=d.workers, help="decoding processes"
    )
    ing.add_argument(
        "--rehash", action="store_true", help="hash every file, trust no mtime"
    )
    ing.add_argument("--quiet", action="store_true", help="no progress bar")


def _ingest(args: argparse.Namespace) -> int:
    """Run ingest; print the summary (problems are in the report)."""
    import sys

    from common.ingest import IngestConfig, IngestError, ingest_site
    from common.ingest.config import IngestConfigError
    from common.ingest.image_labels import parse_label_map

    logging.getLogger("common.ingest").setLevel(logging.WARNING)  # summary below
    try:
        config = IngestConfig(
            image_size=args.image_size,
            intensity=args.intensity,
            window_center=args.window_center,
            window_width=args.window_width,
            slice_policy=args.slice_policy,
            central_slices=args.central_slices,
            min_lung_fraction=args.min_lung_fraction,
            series=args.series,
            max_decoded_mb=args.max_decoded_mb,
            max_file_mb=args.max_file_mb,
            workers=args.workers,
        )
        result = ingest_site(
            args.site_dir,
            args.labels,
            args.out,
            config,
            strict=args.strict,
            progress=not args.quiet,
            rehash=args.rehash,
            label_map=parse_label_map(args.label_map),
        )
    except (IngestError, IngestConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary.text(result.report_path))
    if not result.patients:  # nothing to train on is a failed ingest
        print(f"error: {result.summary.why_nothing_kept()}", file=sys.stderr)
        return 1
    return 0


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help text followed by the option's default, where it has a real one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or not text:
            return text
        if "%(default)" in text or "default:" in text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every command's --help shows each option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


DESCRIPTION = """Federated BigBiGAN features + a linear head for COVID-19 vs other
pneumonia on chest CT (Song et al. 2020), with Flower and secure aggregation.
Hospitals: ingest, doctor, predict, reconstruct, privacy-audit. Coordinators:
pki, report. Researchers: simulate, phantoms, scenarios, train-central, extract.
`fedbigbigan COMMAND --help` for each."""


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


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="fedbigbigan", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ph = sub.add_parser("phantoms", help="write the synthetic two-hospital study")
    ph.add_argument("--out", type=Path, required=True, help="folder to write into")
    _add_study_size(ph)
    ph.add_argument("--seed", type=int, default=0, help="draws the phantom patients")
    add_slice_choice(ph)
    sim = sub.add_parser(
        "simulate",
        help="run the federated study in simulation",
        description="Write a scenario's sites (phantom DICOM by default) and run "
        "the federation in Flower's Simulation Engine: BigBiGAN rounds, the "
        "linear head and the evaluation, every update through secure "
        "aggregation. The same run as `flwr run . local-simulation` (README).",
    )
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
    sim.add_argument(
        "--run-config",
        nargs="*",
        default=[],
        help="run-config overrides (pyproject.toml [tool.flwr.app.config]), "
        "e.g. gan-rounds=2 preset='tiny'",
    )
    sub.add_parser("scenarios", help="list the built-in simulation scenarios")
    hub = sub.add_parser(
        "hub-inspect", help="list a BigBiGAN TF Hub module and how it maps onto E"
    )
    hub.add_argument("module", help="TF Hub handle or local module directory")
    hub.add_argument("--preset", default="paper", help="our preset to map into")
    rep = sub.add_parser("report", help="write RUN_DIR/report.html with its figures")
    rep.add_argument("run_dir", type=Path, help="a run directory (simulate --out)")
    pred = sub.add_parser(
        "predict",
        help="a patient's COVID-19 score from DICOM or images with a trained run",
    )
    pred.add_argument("--model", type=Path, required=True, help="a run directory")
    pred.add_argument(
        "--input",
        "--dicom",
        dest="dicom",
        type=Path,
        required=True,
        help="a DICOM series or study folder, an image file (PNG/JPEG/...) or a "
        "folder of images (a patient per folder)",
    )
    pred.add_argument("--cache", type=Path, default=None, help="ingest cache to reuse")
    rec = sub.add_parser(
        "reconstruct",
        help="a site's own real slices and G(E(x)) under a trained run (stays local)",
    )
    rec.add_argument("--model", type=Path, required=True, help="a run directory")
    rec.add_argument("--dicom", type=Path, required=True, help="the site's DICOM")
    rec.add_argument("--out", type=Path, required=True, help="PNG to write")
    rec.add_argument("--patients", type=int, default=8, help="patients to show")
    rec.add_argument("--cache", type=Path, default=None, help="ingest cache to reuse")
    aud = sub.add_parser(
        "privacy-audit",
        help="at a site: does the run's global G reproduce this site's slices?",
    )
    aud.add_argument("--model", type=Path, required=True, help="a run directory")
    aud.add_argument(
        "--site-dir", type=Path, required=True, help="the site folder (labels.csv)"
    )
    aud.add_argument("--samples", type=int, default=256, help="samples G(z) to check")
    aud.add_argument("--out", type=Path, default=None, help="write the summary here")
    curve = sub.add_parser(
        "privacy-curve",
        help="simulate the study at several DP noise levels: AUC against epsilon",
    )
    curve.add_argument("--out", type=Path, required=True, help="folder of the runs")
    curve.add_argument(
        "--noise", default="0,0.5,1,2", help="noise multipliers, comma-separated"
    )
    _add_study_size(curve)
    curve.add_argument("--run-config", nargs="*", default=[], help="overrides")
    add_model_commands(sub, _add_run_config)
    add_deploy_commands(sub, _add_run_config)
    _add_ingest_command(sub)
    args = parser.parse_args(argv)
    configured = bool(logging.getLogger().handlers)  # e.g. pytest's own
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not configured:
        # Flower's own handler prints its INFO and above; its DEBUG lines (the
        # secure rounds' stages) reach the run's log through ours
        logging.getLogger().handlers[0].addFilter(
            lambda r: not (r.name.startswith("flwr") and r.levelno >= logging.INFO)
        )
    try:
        return _run(parser, args)
    except (ConfigError, RunDirError) as err:  # one line per problem, no traceback
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the parsed command."""
    if args.command in MODEL_COMMANDS:
        overrides = _parse_overrides(getattr(args, "run_config", []))
        flat = {**_default_config().to_flat(), **overrides}
        return run_model_command(args, RunConfig.from_flat(flat))
    if args.command in DEPLOY_COMMANDS:  # pki needs no run config; doctor does
        overrides = _parse_overrides(getattr(args, "run_config", []))
        return run_deploy_command(
            args,
            lambda: RunConfig.from_flat({**_default_config().to_flat(), **overrides}),
        )
    if args.command == "ingest":
        return _ingest(args)
    if args.command == "hub-inspect":
        return _hub_inspect(args.module, args.preset)
    if args.command == "predict":
        from client.predict import InputError, predict_dicom

        try:
            predictions, seconds = predict_dicom(args.model, args.dicom, args.cache)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for p in predictions:
            decision = "COVID-19" if p.covid else "other pneumonia"
            print(
                f"{p.patient_id}: score {p.score:.3f} -> {decision} "
                f"(cut-off {p.threshold:.3f} from validation; {p.n_slices} slices)"
            )
        print(f"scored {len(predictions)} patient(s) in {seconds:.1f} s")
        return 0
    if args.command == "reconstruct":
        from client.reconstruct import site_reconstructions

        print(
            site_reconstructions(
                args.model, args.dicom, args.out, args.patients, args.cache
            )
        )
        return 0
    if args.command == "privacy-curve":
        from simulations.privacy_curve import privacy_curve

        flat = {**_default_config().to_flat(), **_parse_overrides(args.run_config)}
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
    if args.command == "privacy-audit":
        from client.privacy_audit import audit_site

        summary = audit_site(args.model, args.site_dir, args.samples)
        text = json.dumps(summary, indent=2)
        if args.out is not None:
            args.out.write_text(text)
        print(text)
        return 0
    if args.command == "report":
        from server.report import write_report

        print(write_report(args.run_dir))
        return 0
    if args.command == "phantoms":
        from simulations.phantoms import write_study

        for name, path in write_study(
            args.out, args.scale, args.seed, args.slices, args.slice_choice
        ).items():
            print(f"{name}: {path}")
        return 0
    if args.command == "scenarios":
        return _list_scenarios()
    if args.sweep is not None:
        from simulations.scenarios import ScenarioError
        from simulations.sweep import run_sweep

        overrides = _parse_overrides(args.run_config)
        try:
            rows = run_sweep(
                args.sweep, args.out, {**_default_config().to_flat(), **overrides}
            )
        except ScenarioError as err:
            parser.error(str(err))
        print(f"{len(rows)} runs; table: {args.out / 'sweep.csv'}")
        return 0
    return _simulate(args, parser)


def _simulate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`fedbigbigan simulate`: the run's libraries talk to RUN_DIR/run.log; the
    terminal gets a line per phase and round, then the results."""
    base = _default_config().to_flat()
    if args.resume:  # the interrupted run's own config, written when it started
        if not (args.out / "config.json").is_file():
            parser.error(
                f"--resume: {args.out} holds no run to resume (no config.json)"
            )
        base = json.loads((args.out / "config.json").read_text())
        base["resume"] = str(args.out.resolve())
    flat = {**base, **_parse_overrides(args.run_config)}
    from simulations.run_log import RunLog
    from simulations.scenarios import ScenarioError, load_scenario, parse_override
    from simulations.simulate import simulate
    from simulations.site_checks import SiteCheckError

    try:
        config = RunConfig.from_flat(flat)  # every value checked before anything
        if config.roster_file:  # simulated nodes share one node config: no keys
            parser.error(
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
        parser.error(str(err))
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
    from server.report import baseline_lines

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


if __name__ == "__main__":  # python -m simulations.cli, like the entry point
    raise SystemExit(main())
