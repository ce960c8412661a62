"""Multi-site scenarios: which sites a simulation has, and their data.

A scenario is a small TOML file (the built-in ones are in
`simulations/scenarios/`): its sites, each with a scanner profile, a size, a case
mix and a role (train or external), optionally a Dirichlet label skew, or a real
image collection split into sites by a manifest. `build_scenario` writes the
sites' folders under a run's data directory and returns the `sim-sites` roster.
Every scenario splits by patient (a patient lives in exactly one site folder)
and keeps its one external site out of training.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from simulations.image_sites import ImageSiteError, link_sites, read_manifest
from simulations.phantoms import (
    PROFILES,
    PhantomSite,
    SiteProfile,
    write_sites,
    write_study,
)

SCENARIO_DIR = Path(__file__).parent / "scenarios"
MANIFEST = "scenario.json"  # what a data directory was built from
# fewest patients per class at a site: its 80/10/10 split needs some of each
MIN_PER_CLASS = 2
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ScenarioError(ValueError):
    """A scenario file or its data is wrong; the message says where."""


@dataclass(frozen=True)
class ScenarioSite:
    name: str
    role: str  # "train" or "external"
    scanner: str = "hospital_a_ge"
    patients: int = 40  # at scale 1
    covid_fraction: float = 0.5


@dataclass(frozen=True)
class ImageSource:
    """A labelled image folder split into sites by a manifest column."""

    root: str = ""  # an image collection, e.g. <root>/<label>/<patient>/*.png
    manifest: str = ""  # CSV, one row per patient
    patient_column: str = "patient"
    site_column: str = "hospital"
    # the patient's label (0/1 or a label word), if the manifest has it; else
    # the folders' names (see common.ingest.image_labels)
    label_column: str = "label"
    external: str = ""  # the site held out


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    study: str = ""  # "paper": the built-in two-hospital phantom study
    sites: tuple[ScenarioSite, ...] = ()
    scanners: dict[str, SiteProfile] = field(default_factory=dict)
    label_skew_alpha: float | None = None  # Dirichlet(alpha) class mix per site
    images: ImageSource | None = None

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name: str, overrides: dict[str, Any] | None = None) -> Scenario:
    """A built-in scenario by name, or a TOML file by path, with `overrides`
    (nested tables, e.g. {"label-skew": {"alpha": 0.1}}) merged on top."""
    path = Path(name)
    if not path.suffix:
        path = SCENARIO_DIR / f"{name}.toml"
    if not path.is_file():
        raise ScenarioError(
            f"scenario {name!r} not found: use one of {scenario_names()} or the "
            "path of a .toml file"
        )
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: {err}") from None
    _deep_merge(table, overrides or {})
    return _parse(path.stem, table, str(path))


def parse_override(item: str) -> dict[str, Any]:
    """`label-skew.alpha=0.1` or `images.root=/data/ct` as a nested table (a
    value that is not TOML is taken as a string: paths need no quotes)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ScenarioError(f"scenario setting {item!r}: use key=value")
    try:
        return tomllib.loads(f"{key.strip()} = {raw}")
    except tomllib.TOMLDecodeError:
        return tomllib.loads(f"{key.strip()} = {json.dumps(raw)}")


def _deep_merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _fields(kind: type, table: dict, where: str) -> dict[str, Any]:
    """A TOML table's kebab-case keys as `kind`'s field names, checked."""
    names = {f.name for f in dataclasses.fields(kind)}
    out = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in names:
            known = sorted(n.replace("_", "-") for n in names)
            raise ScenarioError(f"{where}: unknown key {key!r} (known: {known})")
        out[name] = value
    return out


def _parse(name: str, table: dict, where: str) -> Scenario:
    top = {"description", "study", "sites", "scanners", "label-skew", "images"}
    unknown = set(table) - top
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    scanners = dict(PROFILES)
    for sname, spec in table.get("scanners", {}).items():
        spec = dict(spec)
        base = scanners.get(spec.pop("base", "hospital_a_ge"))
        if base is None:
            raise ScenarioError(f"{where}: scanners.{sname}: unknown base scanner")
        try:
            scanners[sname] = dataclasses.replace(
                base, **_fields(SiteProfile, spec, f"{where}: scanners.{sname}")
            )
        except TypeError as err:
            raise ScenarioError(f"{where}: scanners.{sname}: {err}") from None
    sites = tuple(
        ScenarioSite(**_fields(ScenarioSite, s, f"{where}: sites[{i}]"))
        for i, s in enumerate(table.get("sites", []))
    )
    alpha = table.get("label-skew", {}).get("alpha")
    images = None
    if "images" in table:
        images = ImageSource(
            **_fields(ImageSource, table["images"], f"{where}: images")
        )
    scenario = Scenario(
        name=name,
        description=str(table.get("description", "")),
        study=str(table.get("study", "")),
        sites=sites,
        scanners=scanners,
        label_skew_alpha=None if alpha is None else float(alpha),
        images=images,
    )
    _check(scenario, where)
    return scenario


def _check(scenario: Scenario, where: str) -> None:
    kinds = [bool(scenario.study), bool(scenario.sites), scenario.images is not None]
    if sum(kinds) != 1:
        raise ScenarioError(
            f"{where}: give exactly one of study = 'paper', [[sites]] or [images]"
        )
    if scenario.study and scenario.study != "paper":
        raise ScenarioError(f"{where}: study {scenario.study!r}: only 'paper' exists")
    if scenario.label_skew_alpha is not None and scenario.label_skew_alpha <= 0:
        raise ScenarioError(f"{where}: label-skew alpha must be > 0")
    if scenario.sites:
        for s in scenario.sites:
            if not _NAME.fullmatch(s.name):
                raise ScenarioError(
                    f"{where}: site name {s.name!r} is not a folder name"
                )
            if s.role not in ("train", "external"):
                raise ScenarioError(
                    f"{where}: site {s.name}: role must be train/external"
                )
            if s.scanner not in scenario.scanners:
                raise ScenarioError(
                    f"{where}: site {s.name}: scanner {s.scanner!r} unknown "
                    f"(known: {sorted(scenario.scanners)})"
                )
            if s.patients < 2 * MIN_PER_CLASS or not 0 < s.covid_fraction < 1:
                raise ScenarioError(
                    f"{where}: site {s.name}: needs patients >= {2 * MIN_PER_CLASS} "
                    "and 0 < covid-fraction < 1"
                )
        _check_roster([(s.name, s.role) for s in scenario.sites], where)


def _check_roster(roster: list[tuple[str, str]], where: str) -> None:
    names = [n for n, _ in roster]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{where}: site names repeat: {names}")
    roles = [r for _, r in roster]
    if roles.count("train") < 2 or roles.count("external") != 1:
        raise ScenarioError(
            f"{where}: needs at least 2 training sites (SecAgg+) and exactly one "
            f"external site, got roles {roles}"
        )


# --------------------------------------------------------------------------
# Building a scenario's site folders
# --------------------------------------------------------------------------


def phantom_sites(scenario: Scenario, scale: float, seed: int) -> list[PhantomSite]:
    """The scenario's phantom sites at `scale`, with the label skew drawn."""
    out = []
    for s in scenario.sites:
        n = max(2 * MIN_PER_CLASS, round(s.patients * scale))
        fraction = s.covid_fraction
        if scenario.label_skew_alpha is not None and s.role == "train":
            # two classes: a Dirichlet(alpha, alpha) share is Beta(alpha, alpha)
            rng = np.random.default_rng([seed, zlib.crc32(s.name.encode())])
            alpha = scenario.label_skew_alpha
            fraction = float(rng.beta(alpha, alpha))
        n_covid = int(np.clip(round(fraction * n), MIN_PER_CLASS, n - MIN_PER_CLASS))
        profile = dataclasses.replace(
            scenario.scanners[s.scanner],
            name=s.name,
            role=s.role,
            id_prefix=re.sub(r"[^A-Z0-9]", "", s.name.upper()) or "SITE",
            institution=s.name.replace("_", " ").title(),
        )
        out.append(PhantomSite(profile, n_covid, n - n_covid))
    return out


def build_scenario(
    scenario: Scenario,
    data: Path,
    scale: float,
    seed: int,
    slices: int,
    slice_choice: str = "even",
) -> str:
    """Write the scenario's site folders under `data` (once: a data directory
    built from the same scenario is reused, another one is refused); return the
    `sim-sites` roster. `slice_choice` picks the phantom patients' slices
    (simulations.phantoms.SLICE_CHOICES)."""
    data = Path(data)
    recipe = {
        "scenario": scenario.to_json(),
        "scale": scale,
        "seed": seed,
        "slices": slices,
        "slice_choice": slice_choice,
    }
    manifest = data / MANIFEST
    if manifest.is_file():
        built = json.loads(manifest.read_text())
        # manifests from before the option were all built with even slices
        if {"slice_choice": "even", **built["recipe"]} != recipe:
            raise ScenarioError(
                f"{data} holds sites built from another scenario or setting "
                f"({built['recipe']['scenario']['name']}, scale "
                f"{built['recipe']['scale']}, seed {built['recipe']['seed']}); "
                "use a new --out"
            )
        return built["sim_sites"]
    if data.exists() and any(data.iterdir()):
        if scenario.study == "paper" and (data / "hospital_b" / "labels.csv").is_file():
            roster = _paper_roster()  # a run directory from before scenarios
        else:
            raise ScenarioError(f"{data} is not empty and holds no {MANIFEST}")
    elif scenario.study == "paper":
        write_study(data, scale, seed, slices, slice_choice)
        roster = _paper_roster()
    elif scenario.images is not None:
        if slice_choice != "even":
            raise ScenarioError(
                f"slice choice {slice_choice!r} picks phantom slices; scenario "
                f"{scenario.name!r} links real images, whose slices are the "
                "collection's"
            )
        roster = _link_images(scenario.images, data)
    else:
        sites = phantom_sites(scenario, scale, seed)
        key = f"{scenario.name}/{seed}/{scale}"
        write_sites(data, sites, seed, slices, key, slice_choice)
        roster = [(s.name, s.profile.role) for s in sites]
    sim_sites = ",".join(f"{n}:{r}" for n, r in roster)
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"recipe": recipe, "sim_sites": sim_sites}, indent=1))
    tmp.replace(manifest)
    return sim_sites


def data_source(data: Path) -> dict[str, Any]:
    """What a simulated run's sites are, for its metrics and report: synthetic
    phantoms (every scenario but one of linked images) or linked images."""
    manifest = Path(data) / MANIFEST
    scenario = {"name": "paper", "images": None}  # sites from before manifests
    if manifest.is_file():
        scenario = json.loads(manifest.read_text())["recipe"]["scenario"]
    synthetic = scenario.get("images") is None
    return {
        "synthetic": synthetic,
        "scenario": scenario.get("name", "?"),
        "kind": "synthetic phantoms" if synthetic else "linked image folders",
    }


def _paper_roster() -> list[tuple[str, str]]:
    return [(name, p.role) for name, p in PROFILES.items()]


def _link_images(source: ImageSource, data: Path) -> list[tuple[str, str]]:
    """One folder per manifest site under `data`, its patients' image files
    linked (the collection itself is only read); returns the roster."""
    root, manifest = Path(source.root), Path(source.manifest)
    if not source.root or not root.is_dir():
        raise ScenarioError(
            f"images.root {source.root!r} is not a folder: give it with "
            "--scenario-set images.root=DIR (an image collection)"
        )
    if not source.manifest or not manifest.is_file():
        raise ScenarioError(
            f"images.manifest {source.manifest!r} is not a file: give it with "
            "--scenario-set images.manifest=FILE.csv"
        )
    try:
        rows = read_manifest(
            manifest, source.patient_column, source.site_column, source.label_column
        )
    except ImageSiteError as err:
        raise ScenarioError(str(err)) from None
    roster_sites = sorted({site for site, _ in rows.values()})
    if source.external not in roster_sites:
        raise ScenarioError(
            f"images.external {source.external!r} is not a site of {manifest} "
            f"(sites: {roster_sites})"
        )
    for name in roster_sites:
        if not _NAME.fullmatch(name):
            raise ScenarioError(f"{manifest}: site {name!r} is not a folder name")
    try:
        link_sites(root, manifest, rows, data)
    except ImageSiteError as err:
        raise ScenarioError(str(err)) from None
    roster = [
        (n, "external" if n == source.external else "train") for n in roster_sites
    ]
    _check_roster(roster, str(manifest))
    missing = [n for n, _ in roster if not (data / n).is_dir()]
    if missing:
        raise ScenarioError(f"{manifest}: sites {missing} have no patient in {root}")
    return roster
