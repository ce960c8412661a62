"""Rendering a planned patient's slices: anatomy, findings, vessels, the
reconstruction kernel and noise, clipped to what the site's scanner stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from simulations.phantoms.geometry import BoolImage, _axes, _ellipse
from simulations.phantoms.lesions import _consolidation, _ggo
from simulations.phantoms.patients import (
    _RNG_SLICE,
    PatientSpec,
    _make_patient,
    _rng,
    _slice_weights,
    plan_site,
)
from simulations.phantoms.profiles import COVID, PROFILES
from simulations.phantoms.thorax import AIR_HU, _add_vessels, _render_thorax


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
