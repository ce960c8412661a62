"""The findings drawn into a slice's lungs: COVID-19's peripheral ground-glass
opacities and other pneumonia's lobar consolidation."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from simulations.phantoms.geometry import (
    FloatImage,
    _axes,
    _bbox,
    _boundary,
    _polyline_points,
    _random_points_in,
    _smooth_field,
    _splat,
    _tree_segments,
)
from simulations.phantoms.patients import Findings
from simulations.phantoms.profiles import SiteProfile
from simulations.phantoms.thorax import LUNG_HU, _Thorax


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
