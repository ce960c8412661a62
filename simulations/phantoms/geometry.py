"""Drawing helpers of the phantom renderer: pixel axes, smooth random fields,
ellipses, Gaussian splats of points, polylines and branching trees, masks."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from simulations.phantoms.profiles import SiteProfile

FloatImage = NDArray[np.float32]
BoolImage = NDArray[np.bool_]


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
