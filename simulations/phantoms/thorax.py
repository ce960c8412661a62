"""The noise-free anatomy of one phantom slice (body, bones, mediastinum,
lungs) and its vessels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulations.phantoms.geometry import (
    BoolImage,
    FloatImage,
    _axes,
    _ellipse,
    _polyline_points,
    _random_points_in,
    _smooth_field,
    _splat,
    _tree_segments,
)
from simulations.phantoms.patients import Anatomy
from simulations.phantoms.profiles import SiteProfile

# Tissue values (HU).
AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_HU = 40.0
LIVER_HU = 55.0
BONE_HU = 700.0
LUNG_HU = -850.0


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
