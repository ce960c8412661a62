"""Intensity policies (HU -> [-1, 1]) and slice policies (which slices to use).

Intensity is applied when slices are cached (it changes the pixels); the slice
policy is applied when they are loaded, from per-slice numbers kept with the
cache (the lung share is measured from cached slices the first time the lung
policy asks for it), so changing it never decodes a file again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from common.ingest.config import IngestConfig

HU_CLIP = 3000.0  # the paper clips metal/bone at 3000 HU ...
HU_RANGE_FOR_CLIP = 4000.0  # ... when a slice's range exceeds 4000 HU
# Aerated lung parenchyma; denser than outside air, lighter than soft tissue.
LUNG_HU = (-950.0, -500.0)
BODY_HU = LUNG_HU[1]  # denser than this: the body wall that encloses the lungs
LUNG_GRID = 64  # the lung share is measured on a grid this size (fast, stable)
_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)  # built once, not per call


def intensity_range(hu: np.ndarray, config: IngestConfig) -> tuple[float, float]:
    """The HU that the intensity policy maps to -1 and to 1 for this slice.

    Kept with the cache: with it a cached slice maps back to HU (within float16
    steps), so the lung share is measured from the cache when first needed.
    """
    if config.intensity == "lung-window":
        half = config.window_width / 2.0
        return config.window_center - half, config.window_center + half
    return paper_range(hu)


def paper_range(hu: np.ndarray) -> tuple[float, float]:
    """The paper's per-image min and max, the max clipped at 3000 HU if wide."""
    low, high = float(hu.min()), float(hu.max())
    if high - low > HU_RANGE_FOR_CLIP:
        high = min(high, HU_CLIP)
    return low, high


def to_unit(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """[low, high] HU to [-1, 1] float32; values outside are clipped."""
    hu = np.asarray(hu, dtype=np.float32)
    if high - low < 1e-6:
        return np.zeros_like(hu)
    scale = np.float32(2.0 / (high - low))
    out = (hu - np.float32(low)) * scale - np.float32(1.0)
    return np.clip(out, -1.0, 1.0, out=out)


def from_unit(unit: np.ndarray, low: float, high: float) -> np.ndarray:
    """The inverse of `to_unit` (inside [low, high])."""
    unit = np.asarray(unit, dtype=np.float32)
    return (unit + np.float32(1.0)) * np.float32((high - low) / 2.0) + np.float32(low)


def paper_unit_range(hu: np.ndarray) -> np.ndarray:
    """The paper's per-image min-max to [-1, 1] (clipped at 3000 HU if wide)."""
    return to_unit(hu, *paper_range(np.asarray(hu)))


def window_unit_range(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """A fixed HU window mapped to [-1, 1]; values outside are clipped."""
    return to_unit(hu, center - width / 2.0, center + width / 2.0)


def to_unit_range(hu: np.ndarray, config: IngestConfig) -> np.ndarray:
    """One HU slice to the model's range under the configured intensity policy."""
    return to_unit(hu, *intensity_range(hu, config))


def lung_fraction(hu: np.ndarray) -> float:
    """Share of the slice that is lung: lung-density pixels inside the body.

    Only low-density regions enclosed by the body count: outside air and the
    partial-volume ring at the skin touch the image border, lungs do not.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.shape[0] > LUNG_GRID and hu.shape[0] % LUNG_GRID == 0:
        k = hu.shape[0] // LUNG_GRID
        hu = hu.reshape(LUNG_GRID, k, LUNG_GRID, k).mean(axis=(1, 3))
    regions, count = ndimage.label(hu <= BODY_HU, structure=_FOUR_NEIGHBOURS)
    if count == 0:
        return 0.0
    touches_border = np.zeros(count + 1, bool)
    touches_border[0] = True  # label 0: the body itself
    for edge in (regions[0], regions[-1], regions[:, 0], regions[:, -1]):
        touches_border[edge] = True
    enclosed = ~touches_border[regions]
    return float(np.count_nonzero(enclosed & (hu >= LUNG_HU[0])) / hu.size)


def select_slices(lung: Sequence[float], config: IngestConfig) -> tuple[list[int], str]:
    """Indices of the slices to use (they are in body-axis order), and why not the rest.

    NaN lung shares (image folders have no HU) always pass the lung policy.
    """
    n = len(lung)
    if config.slice_policy == "lung":
        keep = [
            i
            for i, share in enumerate(lung)
            if not share < config.min_lung_fraction  # NaN passes
        ]
        return keep, (
            f"less than {config.min_lung_fraction:.0%} of the slice is lung "
            "(slice policy 'lung')"
        )
    if config.slice_policy == "central" and n > config.central_slices:
        start = (n - config.central_slices) // 2
        return list(range(start, start + config.central_slices)), (
            f"not among the {config.central_slices} central slices of its series "
            "(slice policy 'central')"
        )
    return list(range(n)), ""
