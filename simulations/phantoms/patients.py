"""Patient plans of a phantom site: anatomy, findings and slice positions, drawn
from generators keyed by (seed, site, purpose, patient)."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulations.phantoms.profiles import (
    _SITE_INDEX,
    COVID,
    OTHER,
    PROFILES,
    PhantomSite,
    SiteProfile,
    site_counts,
)

# Purposes of the random streams (part of each generator's key).
_RNG_PLAN, _RNG_ANATOMY, _RNG_FINDINGS, _RNG_SLICE = range(4)

# Which slices of a patient's series are written: "even" spaces them over most of
# the lungs; "findings" takes them where the patient's lesion is (METHOD.md: the
# study used the slices with suspected findings, the whole scan when none).
SLICE_CHOICES = ("even", "findings")


@dataclass(frozen=True)
class Anatomy:
    """Patient-level anatomy (mm, HU); independent of the label."""

    cx: float  # body centre (x: patient left is +, y: posterior is +)
    cy: float
    half_width: float
    half_depth: float
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest-wall muscle thickness
    lung_scale: float
    heart_scale: float
    inspiration_hu: float  # shift of lung density (deep inspiration: darker)
    spine_radius: float
    lung_length: float  # apex to base
    apex_z: float
    noise_factor: float  # bigger patients are noisier


@dataclass(frozen=True)
class Findings:
    """Patient-level description of the abnormality."""

    kind: str  # "none", "ggo" (COVID-19) or "consolidation" (other pneumonia)
    burden_hu: float  # mean increase of lung HU over the patient's slices
    main_side: int  # -1 right lung, +1 left lung
    bilateral: bool
    crazy_paving: bool
    consolidation_core: bool
    lobe_dir: tuple[float, float]  # direction (x, y) of the consolidated lobe
    lobe_center: float  # slice fraction where the consolidation is largest
    lobe_extent: float
    consolidation_hu: float
    air_bronchograms: bool


@dataclass(frozen=True)
class PatientSpec:
    """Everything needed to render one patient deterministically."""

    profile: SiteProfile  # the site's scanner; `site` is its name
    site: str
    index: int  # 0-based position within the site
    seed: int
    patient_id: str
    label: int
    sex: str
    age: int
    study_date: str
    anatomy: Anatomy
    findings: Findings
    fractions: tuple[float, ...]  # slice position, 0 = lung apex, 1 = base
    z_positions: tuple[float, ...]  # mm (decreasing: apex to base)
    slice_spacing: float


def _site_key(site: str) -> int:
    """A site's part of every generator key: the paper's sites keep their
    historical indices; any other name gets a stable one from its bytes."""
    if site in _SITE_INDEX:
        return _SITE_INDEX[site]
    return 1000 + zlib.crc32(site.encode())


def _rng(seed: int, site: str, purpose: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, _site_key(site), purpose, *more])


def _make_anatomy(rng: np.random.Generator) -> Anatomy:
    half_width = rng.uniform(128.0, 160.0)
    return Anatomy(
        cx=rng.normal(0.0, 6.0),
        cy=rng.normal(-5.0, 6.0),
        half_width=half_width,
        half_depth=half_width * rng.uniform(0.64, 0.78),
        fat=rng.uniform(5.0, 24.0),
        muscle=rng.uniform(8.0, 14.0),
        lung_scale=rng.uniform(0.86, 1.06),
        heart_scale=rng.uniform(0.88, 1.12),
        inspiration_hu=rng.uniform(-40.0, 40.0),
        spine_radius=rng.uniform(14.0, 18.0),
        lung_length=rng.uniform(210.0, 270.0),
        apex_z=rng.uniform(-80.0, 40.0),
        noise_factor=(half_width / 145.0) ** 1.5,
    )


def _make_findings(rng: np.random.Generator, label: int, normal: bool) -> Findings:
    # Burden is drawn identically for both classes: this is what keeps the mean
    # HU of the lungs (and of the body) from giving the label away.
    burden = 0.0 if normal else float(6.0 + 70.0 * rng.beta(1.6, 2.4))
    main_side = int(rng.choice([-1, 1]))
    lobe = rng.choice(["lower", "upper", "middle"], p=[0.5, 0.3, 0.2])
    if lobe == "lower":
        lobe_dir = (0.35 * main_side * rng.uniform(0, 1), 1.0)
        lobe_center = rng.uniform(0.55, 0.95)
    elif lobe == "upper":
        lobe_dir = (0.4 * main_side * rng.uniform(-1, 1), -1.0)
        lobe_center = rng.uniform(0.1, 0.5)
    else:  # middle lobe / lingula: anterior-medial, mid to low
        lobe_dir = (-0.6 * main_side, -1.0)
        lobe_center = rng.uniform(0.45, 0.8)
    norm = math.hypot(*lobe_dir)
    if label == COVID:
        kind, bilateral = "ggo", bool(rng.random() < 0.8)
    else:
        kind, bilateral = "consolidation", bool(rng.random() < 0.15)
    return Findings(
        kind="none" if normal else kind,
        burden_hu=burden,
        main_side=main_side,
        bilateral=bilateral,
        crazy_paving=bool(rng.random() < 0.3),
        consolidation_core=bool(rng.random() < 0.3),
        lobe_dir=(lobe_dir[0] / norm, lobe_dir[1] / norm),
        lobe_center=float(lobe_center),
        lobe_extent=float(rng.uniform(0.15, 0.3)),
        consolidation_hu=float(rng.uniform(-50.0, 40.0)),
        air_bronchograms=bool(rng.random() < 0.6),
    )


def _slice_positions(
    rng: np.random.Generator, anatomy: Anatomy, thickness: float, n: int
) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """Evenly spaced slices spanning most of the lungs (a subset of the series)."""
    start = rng.uniform(0.08, 0.18)
    if n == 1:
        spacing = thickness
        fractions = (0.55,)
    else:
        span = rng.uniform(0.82, 0.94) - start
        steps = max(1, round(span * anatomy.lung_length / (n - 1) / thickness))
        spacing = steps * thickness
        fractions = tuple(start + i * spacing / anatomy.lung_length for i in range(n))
    z0 = anatomy.apex_z - start * anatomy.lung_length
    z_first = round(z0 / thickness) * thickness  # on the reconstruction grid
    zs = tuple(z_first - i * spacing for i in range(n))
    return fractions, zs, spacing


def _findings_positions(
    anatomy: Anatomy, findings: Findings, thickness: float, n: int
) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """n slices over the range where the lesion is at least half its peak,
    evenly spaced (at least one slice thickness apart) and kept inside the lungs."""
    grid = np.linspace(0.08, 0.94, 431)
    weight = _slice_weights(findings, tuple(grid))
    inside = grid[weight >= 0.5 * weight.max()]
    low, high = float(inside.min()), float(inside.max())
    steps = max(1, int((high - low) * anatomy.lung_length / max(n - 1, 1) / thickness))
    spacing = steps * thickness
    block = (n - 1) * spacing / anatomy.lung_length
    # centred on the range, shifted back into the lungs if it sticks out
    first = min(max((low + high - block) / 2, 0.08), max(0.94 - block, 0.08))
    z_first = round((anatomy.apex_z - first * anatomy.lung_length) / thickness)
    zs = tuple(z_first * thickness - i * spacing for i in range(n))
    fractions = tuple((anatomy.apex_z - z) / anatomy.lung_length for z in zs)
    return fractions, zs, spacing


def _make_patient(
    profile: SiteProfile,
    index: int,
    label: int,
    normal: bool,
    seed: int,
    n_slices: int,
    slice_choice: str = "even",
) -> PatientSpec:
    site = profile.name
    rng = _rng(seed, site, _RNG_ANATOMY, index)
    anatomy = _make_anatomy(rng)
    fractions, zs, spacing = _slice_positions(
        rng, anatomy, profile.slice_thickness, n_slices
    )
    day = int(rng.integers(0, 100))  # Jan 20 .. Apr 28, 2020
    date = np.datetime64("2020-01-20") + np.timedelta64(day, "D")
    findings = _make_findings(_rng(seed, site, _RNG_FINDINGS, index), label, normal)
    if slice_choice == "findings" and findings.kind != "none":
        # after every draw above: the same patient, only other slices
        fractions, zs, spacing = _findings_positions(
            anatomy, findings, profile.slice_thickness, n_slices
        )
    return PatientSpec(
        profile=profile,
        site=site,
        index=index,
        seed=seed,
        patient_id=f"{profile.id_prefix}-{index + 1:04d}",
        label=label,
        sex=str(rng.choice(["F", "M"])),
        age=int(rng.integers(22, 88)),
        study_date=str(date).replace("-", ""),
        anatomy=anatomy,
        findings=findings,
        fractions=fractions,
        z_positions=zs,
        slice_spacing=spacing,
    )


def plan_site(
    site: str,
    scale: float = 1.0,
    seed: int = 0,
    slices_per_patient: int = 6,
    slice_choice: str = "even",
) -> list[PatientSpec]:
    """Return the (shuffled-label) patient list of one of the paper's sites."""
    n_covid, n_other = site_counts(scale)[site]
    return plan_phantom_site(
        PhantomSite(PROFILES[site], n_covid, n_other),
        seed,
        slices_per_patient,
        slice_choice,
    )


def plan_phantom_site(
    site: PhantomSite,
    seed: int = 0,
    slices_per_patient: int = 6,
    slice_choice: str = "even",
) -> list[PatientSpec]:
    """Return the (shuffled-label) patient list of any phantom site."""
    if slices_per_patient < 1:
        raise ValueError("slices_per_patient must be >= 1")
    if slice_choice not in SLICE_CHOICES:
        raise ValueError(
            f"slice_choice {slice_choice!r}: use one of {', '.join(SLICE_CHOICES)}"
        )
    n_covid, n_other = site.n_covid, site.n_other
    rng = _rng(seed, site.name, _RNG_PLAN)
    labels = np.array([COVID] * n_covid + [OTHER] * n_other)
    rng.shuffle(labels)
    # About 10 % of each class has no visible abnormality.
    normal = np.zeros(labels.size, dtype=bool)
    for cls, n in ((COVID, n_covid), (OTHER, n_other)):
        idx = np.flatnonzero(labels == cls)
        normal[rng.choice(idx, size=round(0.1 * n), replace=False)] = True
    return [
        _make_patient(
            site.profile, i, int(lab), bool(nrm), seed, slices_per_patient, slice_choice
        )
        for i, (lab, nrm) in enumerate(zip(labels, normal, strict=True))
    ]


def _slice_weights(f: Findings, fractions: tuple[float, ...]) -> NDArray[np.float64]:
    """How the patient's lesion burden is spread over the slices (sums to n)."""
    t = np.asarray(fractions)
    if f.kind == "ggo":
        w = 0.15 + t**2  # lower lobes
    else:
        w = np.exp(-0.5 * ((t - f.lobe_center) / f.lobe_extent) ** 2) + 0.02
    return w * len(t) / w.sum()
