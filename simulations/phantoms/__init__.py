"""Synthetic chest-CT phantom study, written as real DICOM for three scanner sites.

Each site mimics one scanner (vendor tags, matrix, slice thickness, rescale and
padding convention, reconstruction kernel, noise). Patients are COVID-19 (label 1,
mostly bilateral peripheral lower-lobe ground-glass opacities) or other pneumonia
(label 0, mostly unilateral lobar consolidation). The lesion "HU mass" is balanced
between classes so that global intensity statistics do not separate them; the
signal is in the texture, density and location of the findings.

Everything is a deterministic function of ``seed``: generators are keyed by
(seed, site, purpose, patient, slice) so one patient can be re-rendered alone
(the tests do this to check the HU round trip).
"""

from __future__ import annotations

import csv
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from scipy import ndimage

from simulations.run_log import progress

__all__ = [
    "COVID",
    "OTHER",
    "PROFILES",
    "SITE_ROLES",
    "PatientSpec",
    "PhantomSite",
    "PhantomSlice",
    "SiteProfile",
    "iter_site",
    "paper_sites",
    "phantom_hu",
    "plan_phantom_site",
    "plan_site",
    "render_patient",
    "site_counts",
    "stored_pixels",
    "write_sites",
    "write_study",
]

COVID = 1
OTHER = 0

FloatImage = NDArray[np.float32]
BoolImage = NDArray[np.bool_]

# Tissue values (HU).
AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_HU = 40.0
LIVER_HU = 55.0
BONE_HU = 700.0
LUNG_HU = -850.0
MIN_HU = -1024


@dataclass(frozen=True)
class SiteProfile:
    """Scanner / reconstruction settings of one site."""

    name: str
    id_prefix: str
    role: str
    manufacturer: str
    model: str
    institution: str
    kvp: float
    kernel: str
    matrix: int
    fov_mm: float
    slice_thickness: float
    rescale_intercept: float
    bits_stored: int
    padding_value: int | None  # raw stored value outside the FOV (None: air)
    blur_mm: float  # Gaussian sd emulating the reconstruction kernel
    noise_hu: float  # noise sd for an average-sized patient
    noise_corr_px: float  # Gaussian sd correlating the noise (smooth kernels)

    @property
    def pixel_spacing(self) -> float:
        return self.fov_mm / self.matrix

    @property
    def hu_range(self) -> tuple[int, int]:
        """HU values representable with this BitsStored/intercept (signed data)."""
        top = 2 ** (self.bits_stored - 1) - 1 + int(self.rescale_intercept)
        return MIN_HU, min(top, 3071)


PROFILES: dict[str, SiteProfile] = {
    p.name: p
    for p in (
        SiteProfile(
            name="hospital_a_ge",
            id_prefix="A-GE",
            role="train",
            manufacturer="GE MEDICAL SYSTEMS",
            model="Revolution",
            institution="Hospital A",
            kvp=120.0,
            kernel="LUNG",
            matrix=512,
            fov_mm=360.0,
            slice_thickness=1.0,
            rescale_intercept=-1024.0,
            bits_stored=12,
            padding_value=-2000,
            blur_mm=0.3,
            noise_hu=25.0,
            noise_corr_px=0.0,
        ),
        SiteProfile(
            name="hospital_a_neuviz",
            id_prefix="A-NV",
            role="train",
            manufacturer="Neusoft",
            model="NeuViz 128",
            institution="Hospital A",
            kvp=120.0,
            kernel="F20",
            matrix=512,
            fov_mm=380.0,
            slice_thickness=5.0,
            rescale_intercept=-1024.0,
            bits_stored=16,
            padding_value=-2000,
            blur_mm=1.1,
            noise_hu=12.0,
            noise_corr_px=0.9,
        ),
        SiteProfile(
            name="hospital_b",
            id_prefix="B",
            role="external",
            manufacturer="Neusoft",
            model="NeuViz 64",
            institution="Hospital B",
            kvp=110.0,
            kernel="F30",
            matrix=256,
            fov_mm=350.0,
            slice_thickness=5.0,
            rescale_intercept=0.0,
            bits_stored=16,
            padding_value=None,
            blur_mm=0.8,
            noise_hu=15.0,
            noise_corr_px=0.5,
        ),
    )
}

SITE_ROLES: dict[str, str] = {name: p.role for name, p in PROFILES.items()}
_SITE_INDEX = {name: i for i, name in enumerate(PROFILES)}


@dataclass(frozen=True)
class PhantomSite:
    """One site of a phantom study: its scanner profile (named for the site) and
    its patients per class. Scenarios (simulations/scenarios.py) build these."""

    profile: SiteProfile
    n_covid: int
    n_other: int

    @property
    def name(self) -> str:
        return self.profile.name


# Patient counts of the original study: hospital A (split over its two scanners)
# and the external hospital B, as (n_covid, n_other).
_HOSPITAL_A = (83, 83)
_HOSPITAL_B = (15, 20)
_MIN_PER_CLASS = 2

# Purposes of the random streams (part of each generator's key).
_RNG_PLAN, _RNG_ANATOMY, _RNG_FINDINGS, _RNG_SLICE = range(4)

# Which slices of a patient's series are written: "even" spaces them over most of
# the lungs; "findings" takes them where the patient's lesion is (METHOD.md: the
# study used the slices with suspected findings, the whole scan when none).
SLICE_CHOICES = ("even", "findings")


def site_counts(scale: float = 1.0) -> dict[str, tuple[int, int]]:
    """Return {site: (n_covid, n_other)} for a study scaled by ``scale``."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    a_covid = round(_HOSPITAL_A[0] * scale)
    a_other = round(_HOSPITAL_A[1] * scale)
    counts = {
        # The odd patient of each class goes to a different scanner so the two
        # A sites stay balanced overall.
        "hospital_a_ge": ((a_covid + 1) // 2, a_other // 2),
        "hospital_a_neuviz": (a_covid // 2, (a_other + 1) // 2),
        "hospital_b": (round(_HOSPITAL_B[0] * scale), round(_HOSPITAL_B[1] * scale)),
    }
    return {
        site: (max(_MIN_PER_CLASS, c), max(_MIN_PER_CLASS, o))
        for site, (c, o) in counts.items()
    }


# --------------------------------------------------------------------------
# Patient planning
# --------------------------------------------------------------------------


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


@dataclass
class PhantomSlice:
    """One rendered axial slice; ``hu`` is exactly what gets stored (as HU)."""

    hu: NDArray[np.int16]  # rounded, clipped HU; air (-1000) outside the FOV
    fov: BoolImage
    body: BoolImage
    lung: BoolImage
    lesion: BoolImage
    fraction: float
    z: float


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


# --------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _axes(matrix: int, fov_mm: float) -> NDArray[np.float32]:
    """Pixel-centre coordinates (mm) along one image axis, isocentre at 0."""
    spacing = fov_mm / matrix
    return ((np.arange(matrix) + 0.5) * spacing - fov_mm / 2).astype(np.float32)


@lru_cache(maxsize=16)
def _bump_basis(matrix: int, fov_mm: float, cell_mm: float) -> NDArray[np.float32]:
    """Gaussian bumps on a coarse lattice, unit-variance normalised per pixel."""
    axis = _axes(matrix, fov_mm)
    centres = np.arange(-fov_mm / 2 - 2 * cell_mm, fov_mm / 2 + 2 * cell_mm, cell_mm)
    basis = np.exp(-0.5 * ((axis[:, None] - centres[None, :]) / cell_mm) ** 2)
    basis /= np.sqrt((basis**2).sum(axis=1, keepdims=True))
    return basis.astype(np.float32)


def _smooth_field(
    rng: np.random.Generator, profile: SiteProfile, cell_mm: float
) -> FloatImage:
    """Smooth zero-mean, unit-sd random field with correlation length ~cell_mm.

    Two small matrix products instead of a large Gaussian filter: cheap at 512.
    """
    basis = _bump_basis(profile.matrix, profile.fov_mm, cell_mm)
    coeffs = rng.standard_normal((basis.shape[1], basis.shape[1])).astype(np.float32)
    return basis @ coeffs @ basis.T


def _ellipse(
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    cx: float,
    cy: float,
    ax: float,
    ay: float,
) -> FloatImage:
    """Squared normalised radius of an axis-aligned ellipse (<1 inside)."""
    return ((x[None, :] - cx) / ax) ** 2 + ((y[:, None] - cy) / ay) ** 2


def _splat(
    profile: SiteProfile,
    xs: NDArray[np.float64],
    ys: NDArray[np.float64],
    weights: NDArray[np.float64],
    sigma_mm: float,
) -> FloatImage:
    """Render weighted points as Gaussian blobs; a lone weight-1 point peaks at 1.

    Many points along a line make a tube; saturating the result (clip at 1) makes
    heavier points wider, which is how vessel and bone calibres are drawn.
    """
    n = profile.matrix
    spacing = profile.pixel_spacing
    cols = np.round((xs + profile.fov_mm / 2) / spacing - 0.5).astype(np.int64)
    rows = np.round((ys + profile.fov_mm / 2) / spacing - 0.5).astype(np.int64)
    ok = (cols >= 0) & (cols < n) & (rows >= 0) & (rows < n)
    out = np.zeros((n, n), dtype=np.float32)
    if not ok.any():
        return out
    rows, cols, weights = rows[ok], cols[ok], weights[ok]
    # Filter only the points' bounding box (plus the kernel reach): much cheaper.
    sigma_px = sigma_mm / spacing
    margin = int(math.ceil(3.0 * sigma_px)) + 1
    r0, c0 = max(rows.min() - margin, 0), max(cols.min() - margin, 0)
    r1, c1 = min(rows.max() + margin + 1, n), min(cols.max() + margin + 1, n)
    h, w = r1 - r0, c1 - c0
    flat = np.bincount((rows - r0) * w + (cols - c0), weights, minlength=h * w)
    crop = ndimage.gaussian_filter(
        flat.reshape(h, w).astype(np.float32), sigma_px, truncate=3.0
    )
    out[r0:r1, c0:c1] = crop * np.float32(2 * np.pi * sigma_px**2)
    return out


def _polyline_points(
    starts: NDArray[np.float64],
    ends: NDArray[np.float64],
    calibres: NDArray[np.float64],
    sigma_mm: float,
    step_mm: float = 0.5,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Sample segments as points whose splat gives a tube of peak ~calibre."""
    xs, ys, ws = [], [], []
    for (x0, y0), (x1, y1), cal in zip(starts, ends, calibres, strict=True):
        n = max(2, int(math.hypot(x1 - x0, y1 - y0) / step_mm) + 1)
        t = np.linspace(0.0, 1.0, n)
        xs.append(x0 + t * (x1 - x0))
        ys.append(y0 + t * (y1 - y0))
        # Line density 1/step gives a profile peak of sqrt(2 pi) sigma / step.
        ws.append(np.full(n, cal * step_mm / (math.sqrt(2 * math.pi) * sigma_mm)))
    if not xs:
        empty = np.zeros(0)
        return empty, empty, empty
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)


def _tree_segments(
    rng: np.random.Generator,
    root: tuple[float, float],
    targets: NDArray[np.float64],
    calibre: float,
    depth: int = 3,
    keep: float = 1.0,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Branching segments from ``root`` towards each target (vessels, bronchi).

    Each segment is drawn with probability ``keep`` (and partly), its children
    regardless, which gives the fragmented look of vessels in a thin slice.
    """
    starts, ends, cals = [], [], []
    stack = []
    for tx, ty in targets:
        dx, dy = tx - root[0], ty - root[1]
        length = math.hypot(dx, dy) * rng.uniform(0.35, 0.6)
        stack.append((root[0], root[1], math.atan2(dy, dx), length, calibre, depth))
    while stack:
        x, y, ang, length, cal, level = stack.pop()
        x1, y1 = x + length * math.cos(ang), y + length * math.sin(ang)
        # Vessels leave the slice plane: only some pieces are seen in-plane.
        if rng.random() < keep:
            a = rng.uniform(0.0, 0.4)
            b = rng.uniform(0.6, 1.0)
            starts.append((x + a * (x1 - x), y + a * (y1 - y)))
            ends.append((x + b * (x1 - x), y + b * (y1 - y)))
            cals.append(cal)
        if level > 0:
            for sign in (-1.0, 1.0):
                turn = sign * math.radians(rng.uniform(14.0, 36.0))
                stack.append(
                    (
                        x1,
                        y1,
                        ang + turn,
                        length * rng.uniform(0.55, 0.75),
                        cal * rng.uniform(0.45, 0.65),
                        level - 1,
                    )
                )
    return np.array(starts), np.array(ends), np.array(cals)


def _random_points_in(
    rng: np.random.Generator,
    mask: BoolImage,
    profile: SiteProfile,
    n: int,
    weights: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """``n`` pixel-centre positions (mm, as x, y rows) drawn from a mask."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return np.zeros((0, 2))
    p = None if weights is None else weights / weights.sum()
    pick = rng.choice(idx, size=n, p=p)
    axis = _axes(profile.matrix, profile.fov_mm).astype(np.float64)
    rows, cols = np.divmod(pick, profile.matrix)
    jitter = rng.uniform(-0.5, 0.5, size=(n, 2)) * profile.pixel_spacing
    return np.stack([axis[cols], axis[rows]], axis=1) + jitter


# --------------------------------------------------------------------------
# Slice rendering
# --------------------------------------------------------------------------


@dataclass
class _Thorax:
    """Noise-free anatomy of one slice plus the masks lesions need."""

    hu: FloatImage
    body: BoolImage
    lungs: tuple[BoolImage, BoolImage]  # right (-x), left (+x)
    hila: tuple[tuple[float, float], tuple[float, float]]
    centres: tuple[tuple[float, float], tuple[float, float]]


def _lung_width(t: float) -> float:
    """Lung cross-section scale from apex (t=0) to base (t=1)."""
    return 0.42 + 0.58 * math.sin(min(t / 0.62, 1.0) * math.pi / 2)


def _render_thorax(
    profile: SiteProfile, an: Anatomy, t: float, rng: np.random.Generator
) -> _Thorax:
    x = _axes(profile.matrix, profile.fov_mm)
    y = x
    n = profile.matrix
    hu = np.full((n, n), AIR_HU, dtype=np.float32)

    # Scanner table: thin shells around a foam core, just under the patient.
    table_top = an.cy + an.half_depth + 2.0
    yy = y[:, None]
    on_table = np.abs(x[None, :]) < 230.0
    hu[(yy >= table_top) & (yy < table_top + 3) & on_table] = 150.0
    hu[(yy >= table_top + 3) & (yy < table_top + 22) & on_table] = -880.0
    hu[(yy >= table_top + 22) & (yy < table_top + 25) & on_table] = 150.0

    # Body: fat ring, then muscle, then the thoracic cavity.
    body = _ellipse(x, y, an.cx, an.cy, an.half_width, an.half_depth) <= 1.0
    hu[body] = FAT_HU
    muscle = (
        _ellipse(x, y, an.cx, an.cy, an.half_width - an.fat, an.half_depth - an.fat)
        <= 1.0
    )
    hu[muscle] = SOFT_HU
    wall = an.fat + an.muscle
    cav_ax, cav_ay = an.half_width - wall, an.half_depth - wall
    cavity = _ellipse(x, y, an.cx, an.cy, cav_ax, cav_ay) <= 1.0

    # Bones are drawn as saturated splats: ribs as arcs in the chest wall.
    bone_x, bone_y, bone_w = [], [], []
    rib_sigma = 1.5
    for _ in range(int(rng.integers(7, 12))):
        # Arc of the chest wall, avoiding the sternum and spine (at -+pi/2).
        a0 = rng.uniform(-math.pi, math.pi)
        if abs(abs(a0) - math.pi / 2) < 0.3:
            continue
        angles = np.linspace(a0, a0 + rng.uniform(0.12, 0.35), 24)
        px = an.cx + (cav_ax + 5.0) * np.cos(angles)
        py = an.cy + (cav_ay + 5.0) * np.sin(angles)
        starts = np.stack([px[:-1], py[:-1]], axis=1)
        ends = np.stack([px[1:], py[1:]], axis=1)
        sx, sy, sw = _polyline_points(
            starts, ends, np.full(len(starts), 30.0), rib_sigma
        )
        bone_x.append(sx)
        bone_y.append(sy)
        bone_w.append(sw)
    if t < 0.8:  # sternum
        sx, sy, sw = _polyline_points(
            np.array([[an.cx - 9.0, an.cy - cav_ay - 6.0]]),
            np.array([[an.cx + 9.0, an.cy - cav_ay - 6.0]]),
            np.array([60.0]),
            rib_sigma,
        )
        bone_x.append(sx)
        bone_y.append(sy)
        bone_w.append(sw)

    # Spine: vertebral body bulging into the cavity, posterior elements behind.
    rv = an.spine_radius
    vy = an.cy + cav_ay - 0.35 * rv
    canal_y = vy + rv + 6.0
    post = np.array(
        [
            [[an.cx - 9.0, canal_y + 2.0], [an.cx, canal_y + 12.0]],
            [[an.cx + 9.0, canal_y + 2.0], [an.cx, canal_y + 12.0]],
            [[an.cx, canal_y + 12.0], [an.cx, canal_y + 30.0]],
        ]
    )
    sx, sy, sw = _polyline_points(post[:, 0], post[:, 1], np.full(3, 25.0), rib_sigma)
    bone_x.append(sx)
    bone_y.append(sy)
    bone_w.append(sw)
    bones = np.clip(
        _splat(
            profile,
            np.concatenate(bone_x),
            np.concatenate(bone_y),
            np.concatenate(bone_w),
            rib_sigma,
        ),
        0.0,
        1.0,
    )
    hu += bones * (BONE_HU - 50.0 - hu) * body

    vert = _ellipse(x, y, an.cx, vy, rv, rv * 0.9)
    in_vert = vert <= 1.0
    hu[in_vert] = BONE_HU
    hu[vert <= 0.72] = 380.0  # cancellous bone inside the cortex
    hu[_ellipse(x, y, an.cx, canal_y, 7.0, 6.5) <= 1.0] = 15.0  # spinal canal

    # Mediastinum, heart and great vessels.
    medi = (_ellipse(x, y, an.cx + 2.0, an.cy, 0.16 * cav_ax, cav_ay) <= 1.0) & cavity
    heart_size = min(max((t - 0.25) / 0.45, 0.0), 1.0) * an.heart_scale
    heart = np.zeros_like(medi)
    if heart_size > 0.05:
        heart = (
            _ellipse(
                x,
                y,
                an.cx + 0.14 * cav_ax,
                an.cy - 0.12 * cav_ay,
                0.36 * cav_ax * heart_size + 1.0,
                0.56 * cav_ay * heart_size + 1.0,
            )
            <= 1.0
        )
    # Aortic arch / ascending aorta in the upper-mid chest, descending always.
    aorta_d = (
        _ellipse(x, y, an.cx + 0.11 * cav_ax + 8.0, vy - rv * 0.5, 12.0, 12.0) <= 1.0
    )
    aorta_a = np.zeros_like(medi)
    if 0.2 < t < 0.6:
        aorta_a = _ellipse(x, y, an.cx + 8.0, an.cy - 0.3 * cav_ay, 15.0, 15.0) <= 1.0
    trachea = np.zeros_like(medi)
    if t < 0.38:
        trachea = _ellipse(x, y, an.cx - 2.0, an.cy - 0.05 * cav_ay, 9.0, 8.0) <= 1.0
    soft = medi | heart | aorta_d | aorta_a
    hu[soft & ~in_vert] = SOFT_HU
    hu[aorta_d | aorta_a] = 45.0

    # Lungs: ellipses clipped by the cavity, minus mediastinum/heart/spine.
    w = _lung_width(t) * an.lung_scale
    wobble = _smooth_field(rng, profile, 25.0) * 0.06
    lungs = []
    centres = []
    hila = []
    dome = max(0.0, (t - 0.72) / 0.28)  # diaphragm domes rise from anterior
    inner_cav = _ellipse(x, y, an.cx, an.cy, cav_ax - 2.0, cav_ay - 2.0) <= 1.0
    blocked = soft | (_ellipse(x, y, an.cx, vy, rv + 6.0, rv + 6.0) <= 1.0)
    for side in (-1.0, 1.0):
        lcx = an.cx + side * 0.5 * cav_ax
        lcy = an.cy + 0.06 * cav_ay
        lax, lay = 0.5 * cav_ax * w, 0.98 * cav_ay * w
        lung = (_ellipse(x, y, lcx, lcy, lax, lay) + wobble <= 1.0) & inner_cav
        lung &= ~blocked
        if dome > 0:
            # Diaphragm dome (higher on the liver side) cut from the lung's
            # anterior-central part, leaving a posterolateral crescent.
            size = min(dome * (1.15 if side < 0 else 0.9), 0.97)
            lung &= (
                _ellipse(x, y, lcx - side * 0.1 * lax, lcy - 0.25 * lay, lax, lay)
                > size**2
            )
        lungs.append(lung)
        centres.append((lcx, lcy))
        hila.append((an.cx + side * 0.2 * cav_ax, an.cy - 0.05 * cav_ay))
    if dome > 0:  # below the domes: liver (right) / spleen and stomach (left)
        below = cavity & ~soft & ~in_vert & ~lungs[0] & ~lungs[1]
        hu[below] = LIVER_HU
    hu[trachea] = AIR_HU

    lung_any = lungs[0] | lungs[1]
    # Parenchyma: inspiration shift, gravity-dependent (posterior) density
    # gradient and faint texture.
    gradient = 35.0 * np.clip((y[:, None] - (an.cy - cav_ay)) / (2 * cav_ay), 0, 1)
    texture = _smooth_field(rng, profile, 6.0) * 8.0
    lung_base = (LUNG_HU + an.inspiration_hu + gradient + texture).astype(np.float32)
    hu = np.where(lung_any, lung_base, hu)
    return _Thorax(
        hu=hu,
        body=body,
        lungs=(lungs[0], lungs[1]),
        hila=(hila[0], hila[1]),
        centres=(centres[0], centres[1]),
    )


def _add_vessels(
    profile: SiteProfile, th: _Thorax, hu: FloatImage, rng: np.random.Generator
) -> FloatImage:
    """Branching vessels and cross-sectioned vessel dots, denser near the hila."""
    sigma = 1.2
    xs, ys, ws = [], [], []
    axis = _axes(profile.matrix, profile.fov_mm).astype(np.float64)
    for lung, hilum in zip(th.lungs, th.hila, strict=True):
        if lung.sum() < 50:
            continue
        targets = _random_points_in(rng, lung, profile, int(rng.integers(2, 5)))
        starts, ends, cals = _tree_segments(
            rng, hilum, targets, rng.uniform(4.0, 7.0), keep=0.6
        )
        sx, sy, sw = _polyline_points(starts, ends, cals, sigma)
        xs.append(sx)
        ys.append(sy)
        ws.append(sw)
        # Dots: vessels crossing the slice, bigger and more frequent centrally.
        rows, cols = np.nonzero(lung)
        dist = np.hypot(axis[cols] - hilum[0], axis[rows] - hilum[1])
        prox = np.exp(-dist / 45.0)
        n_dots = int(rng.integers(15, 30))
        pts = _random_points_in(rng, lung, profile, n_dots, weights=prox + 0.15)
        d = np.hypot(pts[:, 0] - hilum[0], pts[:, 1] - hilum[1])
        xs.append(pts[:, 0])
        ys.append(pts[:, 1])
        ws.append(1.1 + 4.0 * np.exp(-d / 40.0) * rng.uniform(0.5, 1.0, len(d)))
    if not xs:
        return hu
    vessels = _splat(
        profile, np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), sigma
    )
    lung_any = th.lungs[0] | th.lungs[1]
    v = np.clip(vessels, 0.0, 1.0) * lung_any
    return hu + v * (SOFT_HU - hu)


def _bbox(mask: BoolImage, margin: int) -> tuple[slice, slice]:
    """Bounding box of a (non-empty) mask, grown by ``margin`` pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    n_rows, n_cols = mask.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, n_rows)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, n_cols)),
    )


def _boundary(mask: BoolImage) -> BoolImage:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _slice_weights(f: Findings, fractions: tuple[float, ...]) -> NDArray[np.float64]:
    """How the patient's lesion burden is spread over the slices (sums to n)."""
    t = np.asarray(fractions)
    if f.kind == "ggo":
        w = 0.15 + t**2  # lower lobes
    else:
        w = np.exp(-0.5 * ((t - f.lobe_center) / f.lobe_extent) ** 2) + 0.02
    return w * len(t) / w.sum()


def _ggo(
    profile: SiteProfile,
    th: _Thorax,
    f: Findings,
    mass: float,
    rng: np.random.Generator,
) -> FloatImage:
    """Peripheral patchy ground-glass blobs adding ``mass`` HU*pixels in total."""
    n = profile.matrix
    sp = profile.pixel_spacing
    axis = _axes(n, profile.fov_mm)
    delta = np.zeros((n, n), dtype=np.float32)
    patchy = np.clip(0.75 + 0.35 * _smooth_field(rng, profile, 5.0), 0.2, 1.0)
    paving = None
    if f.crazy_paving:
        # Zero crossings of a random field form a polygonal reticular network.
        field = _smooth_field(rng, profile, 3.0)
        paving = np.exp(-((field / 0.25) ** 2))
    sides = []
    for s, lung in enumerate(th.lungs):
        edge = _boundary(lung)
        rows, cols = np.nonzero(edge)
        if rows.size < 10:
            sides.append(None)
            continue
        cx, cy = th.centres[s]
        lateral = np.abs(axis[cols] - th.hila[s][0]) / 60.0
        posterior = (axis[rows] - cy) / 60.0
        # Subpleural, lateral and posterior preferred; not the mediastinal edge.
        weights = np.exp(1.2 * posterior + 1.5 * lateral)
        sides.append((rows, cols, weights / weights.sum()))
    available = [s for s in range(2) if sides[s] is not None]
    if not available:
        return delta
    main = 0 if f.main_side < 0 else 1
    total = 0.0
    for _ in range(40):
        if total >= mass:
            break
        p_main = 0.5 if f.bilateral else 0.9
        s = main if rng.random() < p_main else 1 - main
        if sides[s] is None:
            s = available[0]
        rows, cols, weights = sides[s]
        k = rng.choice(rows.size, p=weights)
        bx, by = float(axis[cols[k]]), float(axis[rows[k]])
        cx, cy = th.centres[s]
        inward = np.array([cx - bx, cy - by])
        inward /= max(np.linalg.norm(inward), 1e-6)
        target_hu = rng.uniform(-550.0, -350.0)
        gain = target_hu - LUNG_HU
        # Size the blob from the remaining mass so the total stays on target.
        remaining = mass - total
        along = rng.uniform(10.0, 28.0)
        depth = rng.uniform(6.0, 16.0)
        est = math.pi * along * depth / sp**2 * 0.55 * gain
        if est > 1.3 * remaining:
            shrink = math.sqrt(max(remaining, 0.05 * est) / est)
            along, depth = max(along * shrink, 3.0), max(depth * shrink, 3.0)
        centre = np.array([bx, by]) + inward * depth * 0.55
        r = along + 3.0
        c0 = max(0, int((centre[0] - r + profile.fov_mm / 2) / sp))
        c1 = min(n, int((centre[0] + r + profile.fov_mm / 2) / sp) + 2)
        r0 = max(0, int((centre[1] - r + profile.fov_mm / 2) / sp))
        r1 = min(n, int((centre[1] + r + profile.fov_mm / 2) / sp) + 2)
        if c1 <= c0 or r1 <= r0:
            continue
        dx = axis[None, c0:c1] - centre[0]
        dy = axis[r0:r1, None] - centre[1]
        # Elongated along the pleura (perpendicular to the inward direction).
        u = dx * inward[0] + dy * inward[1]
        v = -dx * inward[1] + dy * inward[0]
        rho2 = (u / depth) ** 2 + (v / along) ** 2
        blob = np.clip((1.0 - rho2) * 2.0, 0.0, 1.0) * patchy[r0:r1, c0:c1]
        blob *= th.lungs[s][r0:r1, c0:c1]
        new = blob * gain
        if f.consolidation_core and rng.random() < 0.5:
            core = np.clip((0.3 - rho2) * 6.0, 0.0, 1.0) * th.lungs[s][r0:r1, c0:c1]
            new = np.maximum(new, core * (rng.uniform(-120.0, -40.0) - LUNG_HU))
        if paving is not None:
            new = new + paving[r0:r1, c0:c1] * 110.0 * (blob > 0.3)
        old = delta[r0:r1, c0:c1]
        merged = np.maximum(old, new)
        total += float((merged - old).sum())
        delta[r0:r1, c0:c1] = merged
    return delta


def _consolidation_region(
    profile: SiteProfile,
    th: _Thorax,
    side: int,
    direction: tuple[float, float],
    fraction: float,
    rng: np.random.Generator,
) -> FloatImage:
    """Soft mask of the part of one lung beyond a wavy 'fissure' line."""
    lung = th.lungs[side]
    axis = _axes(profile.matrix, profile.fov_mm)
    cx, cy = th.centres[side]
    dx, dy = axis[None, :] - cx, axis[:, None] - cy
    proj = dx * direction[0] + dy * direction[1]
    perp = -dx * direction[1] + dy * direction[0]
    # Bend the boundary so the region is a segment-like cap against the pleura,
    # and make it irregular.
    proj = proj + perp**2 / (2.0 * rng.uniform(60.0, 140.0))
    proj = proj + 10.0 * _smooth_field(rng, profile, 20.0)
    values = proj[lung]
    if values.size == 0:
        return np.zeros(lung.shape, dtype=np.float32)
    thr = np.quantile(values, 1.0 - min(fraction, 0.85))
    return np.clip((proj - thr) / 2.5 + 0.5, 0.0, 1.0) * lung


def _consolidation(
    profile: SiteProfile,
    th: _Thorax,
    f: Findings,
    mass: float,
    rng: np.random.Generator,
) -> FloatImage:
    """Dense lobar/segmental consolidation adding about ``mass`` HU*pixels."""
    main = 0 if f.main_side < 0 else 1
    parts = [(main, 1.0)] if not f.bilateral else [(main, 0.7), (1 - main, 0.3)]
    delta = np.zeros(th.hu.shape, dtype=np.float32)
    gain = f.consolidation_hu - LUNG_HU
    density = 1.0 + 0.04 * _smooth_field(rng, profile, 8.0)
    for side, share in parts:
        area = th.lungs[side].sum()
        if area < 50:
            continue
        want = mass * share
        direction = f.lobe_dir if side == main else (-f.lobe_dir[0], f.lobe_dir[1])
        frac = want / (gain * area)
        fissure_seed = int(rng.integers(2**31))
        box = _bbox(th.lungs[side], int(10.0 / profile.pixel_spacing))
        # One secant-like correction: soft edges, bronchograms and the halo
        # change the delivered mass by a roughly constant factor.
        for _ in range(2):
            region = _consolidation_region(
                profile, th, side, direction, frac, np.random.default_rng(fissure_seed)
            )
            part = region * gain * density
            # Thin ground-glass halo around the consolidation.
            halo = np.zeros_like(region)
            halo[box] = ndimage.gaussian_filter(
                region[box], 3.0 / profile.pixel_spacing, truncate=3.0
            )
            part = np.maximum(part, halo * 0.35 * gain * th.lungs[side])
            got = float(part.sum())
            if got <= 0:
                break
            frac *= want / got
        if f.air_bronchograms and region.sum() > 30:
            targets = _random_points_in(rng, region > 0.9, profile, 3)
            starts, ends, cals = _tree_segments(
                rng, th.hila[side], targets, rng.uniform(6.0, 10.0), depth=2
            )
            sx, sy, sw = _polyline_points(starts, ends, cals, 0.8)
            bronchi = np.clip(_splat(profile, sx, sy, sw, 0.8), 0.0, 1.0)
            part *= 1.0 - 0.95 * bronchi * (region > 0.5)
        delta = np.maximum(delta, part)
    return delta


def _render_slice(spec: PatientSpec, i: int) -> PhantomSlice:
    profile = spec.profile
    an = spec.anatomy
    f = spec.findings
    t = spec.fractions[i]
    rng = _rng(spec.seed, spec.site, _RNG_SLICE, spec.index, i)
    th = _render_thorax(profile, an, t, rng)
    hu = th.hu
    lung_any = th.lungs[0] | th.lungs[1]

    lesion = np.zeros_like(hu)
    if f.kind != "none" and lung_any.any():
        # Mass in HU*pixels that raises this slice's mean lung HU by the share
        # of the patient's burden allotted to it.
        share = _slice_weights(f, spec.fractions)[i]
        mass = f.burden_hu * share * float(lung_any.sum())
        if f.kind == "ggo":
            lesion = _ggo(profile, th, f, mass, rng)
        else:
            lesion = _consolidation(profile, th, f, mass, rng)
        hu = hu + lesion * lung_any
    hu = _add_vessels(profile, th, hu, rng)

    # Reconstruction kernel, then noise (smooth kernels correlate the noise).
    sp = profile.pixel_spacing
    hu = ndimage.gaussian_filter(hu, profile.blur_mm / sp, truncate=3.0)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    if profile.noise_corr_px > 0:
        noise = ndimage.gaussian_filter(noise, profile.noise_corr_px)
        noise /= noise.std()
    hu = hu + noise * np.float32(profile.noise_hu * an.noise_factor)

    x = _axes(profile.matrix, profile.fov_mm)
    fov = _ellipse(x, x, 0.0, 0.0, profile.fov_mm / 2, profile.fov_mm / 2) <= 1.0
    lo, hi = profile.hu_range
    out = np.clip(np.rint(hu), lo, hi).astype(np.int16)
    out[~fov] = int(AIR_HU)
    return PhantomSlice(
        hu=out,
        fov=fov,
        body=th.body & fov,
        lung=lung_any,
        lesion=(lesion > 100.0) & lung_any,
        fraction=t,
        z=spec.z_positions[i],
    )


def render_patient(spec: PatientSpec) -> list[PhantomSlice]:
    """Render all slices of one patient (apex to base)."""
    return [_render_slice(spec, i) for i in range(len(spec.fractions))]


def iter_site(
    site: str, scale: float = 1.0, seed: int = 0, slices_per_patient: int = 6
) -> Iterator[tuple[PatientSpec, list[PhantomSlice]]]:
    """Yield (spec, slices) for every patient of a site, without writing files."""
    for spec in plan_site(site, scale, seed, slices_per_patient):
        yield spec, render_patient(spec)


def phantom_hu(
    profile_name: str,
    label: int = COVID,
    seed: int = 0,
    slice_fraction: float = 0.75,
    patient_index: int = 0,
) -> NDArray[np.int16]:
    """One HU slice of a stand-alone phantom patient (for previews and tests)."""
    spec = _make_patient(PROFILES[profile_name], patient_index, label, False, seed, 1)
    spec = replace(spec, fractions=(slice_fraction,))
    return _render_slice(spec, 0).hu


# --------------------------------------------------------------------------
# DICOM output
# --------------------------------------------------------------------------


def stored_pixels(profile: SiteProfile, sl: PhantomSlice) -> NDArray[np.int16]:
    """Raw stored values (HU - intercept), with padding outside the FOV."""
    raw = (sl.hu.astype(np.int32) - int(profile.rescale_intercept)).astype(np.int16)
    if profile.padding_value is not None:
        raw[~sl.fov] = profile.padding_value
    return raw


def _uid(*parts: object) -> str:
    # Deterministic UIDs: rewriting a study with the same seed gives the same files.
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _dataset(
    profile: SiteProfile, spec: PatientSpec, i: int, sl: PhantomSlice, key: str
) -> Dataset:
    study_uid = _uid(key, spec.patient_id, "study")
    sop_uid = _uid(key, spec.patient_id, "image", i)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid(key, spec.patient_id, "series")
    ds.FrameOfReferenceUID = _uid(key, spec.patient_id, "frame")
    ds.PositionReferenceIndicator = ""

    ds.PatientName = f"Phantom^{spec.patient_id}"
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = spec.sex
    ds.PatientAge = f"{spec.age:03d}Y"
    ds.PatientIdentityRemoved = "YES"

    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{9 + spec.index % 9:02d}3000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST (synthetic phantom)"
    ds.SeriesDescription = "Axial lung"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = i + 1
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.model
    ds.InstitutionName = profile.institution
    ds.KVP = profile.kvp
    ds.ConvolutionKernel = profile.kernel
    ds.SliceThickness = profile.slice_thickness
    ds.ReconstructionDiameter = profile.fov_mm
    ds.PatientPosition = "HFS"
    ds.ImageComments = "Synthetic phantom, not patient data"

    sp = profile.pixel_spacing
    corner = -profile.fov_mm / 2 + sp / 2
    ds.PixelSpacing = [round(sp, 6), round(sp, 6)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [round(corner, 4), round(corner, 4), sl.z]
    ds.SliceLocation = sl.z

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = profile.matrix
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = 1
    if profile.padding_value is not None:
        ds.PixelPaddingValue = profile.padding_value
    ds.RescaleIntercept = profile.rescale_intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    ds.PixelData = stored_pixels(profile, sl).astype("<i2").tobytes()
    return ds


def paper_sites(scale: float = 1.0) -> list[PhantomSite]:
    """The study's three sites (hospital A's two scanners, hospital B)."""
    return [
        PhantomSite(PROFILES[name], *counts)
        for name, counts in site_counts(scale).items()
    ]


def write_study(
    out_dir: Path,
    scale: float = 1.0,
    seed: int = 0,
    slices_per_patient: int = 6,
    slice_choice: str = "even",
) -> dict[str, Path]:
    """Write the phantom study; return {site_name: site_dir}."""
    key = f"fedbigbigan-phantom/{seed}/{scale}/{slices_per_patient}"
    return write_sites(
        out_dir, paper_sites(scale), seed, slices_per_patient, key, slice_choice
    )


def write_sites(
    out_dir: Path,
    sites: list[PhantomSite],
    seed: int = 0,
    slices_per_patient: int = 6,
    key: str | None = None,
    slice_choice: str = "even",
) -> dict[str, Path]:
    """Write phantom sites as DICOM + labels.csv; return {site_name: site_dir}.

    `key` seeds the DICOM UIDs (same key and slice choice, same files)."""
    out_dir = Path(out_dir)
    key = key or f"fedbigbigan-phantom/{seed}/{slices_per_patient}"
    if slice_choice != "even":  # "even" keeps the UIDs it always had
        key += f"/{slice_choice}"
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique, got {names}")
    prefixes = [s.profile.id_prefix for s in sites]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"patient id prefixes must be unique, got {prefixes}")
    written: dict[str, Path] = {}
    for site in sites:
        profile = site.profile
        site_dir = out_dir / site.name
        rows = []
        for spec in progress(
            plan_phantom_site(site, seed, slices_per_patient, slice_choice),
            f"writing {site.name}",
            site.n_covid + site.n_other,
        ):
            slices = render_patient(spec)
            patient_dir = site_dir / "dicom" / spec.patient_id
            patient_dir.mkdir(parents=True, exist_ok=True)
            for i, sl in enumerate(slices):
                ds = _dataset(profile, spec, i, sl, key)
                ds.save_as(patient_dir / f"{i + 1:02d}.dcm", enforce_file_format=True)
            rows.append((spec.patient_id, spec.label))
        with open(site_dir / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient_id", "label"])
            writer.writerows(sorted(rows))
        written[site.name] = site_dir
    return written
