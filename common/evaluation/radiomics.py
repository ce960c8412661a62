"""First-order radiomics of a slice: the baseline every run reports beside the model.

Per slice, inside the body: the share of pixels in each of HIST_BINS HU bins
over WINDOW_HU, and first-order statistics of the same values (mean, SD,
percentiles, skewness, kurtosis, entropy of that histogram): FEATURES. A
linear head on them, fitted with the same secure rounds as the model's head,
scores each slice, and a patient's score pools its slices' as the model's does.

Input is what a site holds: the ingest cache's preprocessed slices in [-1, 1].
The cache keeps, per slice, the HU its -1 and 1 stand for
(`IngestedSeries.ranges`), so the HU are recovered (within float16 steps:
about 1 HU for a 2,000 HU range). Limits: under the "lung-window" intensity
policy the cache keeps only [-1350, 150] HU, so denser tissue piles up at
150 HU; image folders have no HU at all, and their features are computed on
the preprocessed intensities over [-1, 1] with every pixel counted (the
feature names say HU; the values are then intensities).

Why not pyradiomics: its last release on PyPI (3.1.0, checked with Python
3.11) ships no wheel, and its source archive declares another version (3.0.1a1)
than its name, so pip discards it; 3.0.1 builds only from source with a C
compiler on every hospital node and brings SimpleITK (a large binary) for
image I/O we do not need. The first-order features are a few lines of numpy,
with pyradiomics' definitions (population moments, non-excess kurtosis,
base-2 entropy of the binned values); its default binning is by 25 HU width,
ours is a fixed 50 HU grid, so every slice has the same feature vector length.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

WINDOW_HU = (-1100.0, 200.0)  # lung to soft tissue; bone and metal clipped
HIST_BINS = 26  # 50 HU wide over WINDOW_HU
BODY_HU = -500.0  # denser than this: tissue; the body is its largest blob, filled
HU_SCALE = 1000.0  # HU statistics are sent in thousands of HU (secure-round range)
STATS = ("mean", "sd", "p10", "p25", "p50", "p75", "p90", "skewness", "kurtosis")
FEATURES = (
    *STATS,
    "entropy",
    *(f"hist_{i:02d}" for i in range(HIST_BINS)),
)
N_FEATURES = len(FEATURES)


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The body on an axial slice: the largest connected region denser than
    BODY_HU, holes (lungs, airways) filled. All False when nothing is dense."""
    dense = np.asarray(hu) > BODY_HU
    regions, count = ndimage.label(dense)
    if count == 0:
        return np.zeros(dense.shape, bool)
    sizes = np.bincount(regions.ravel())[1:]
    return ndimage.binary_fill_holes(regions == 1 + int(np.argmax(sizes)))


def first_order(
    values: np.ndarray, window: tuple[float, float] = WINDOW_HU, scale: float = 1.0
) -> np.ndarray:
    """FEATURES of `values` clipped to `window`: statistics divided by `scale`
    (not the shape ones), entropy in bits, then the bin shares."""
    low, high = window
    v = np.clip(np.asarray(values, np.float64).ravel(), low, high)
    if v.size == 0:
        return np.zeros(N_FEATURES)
    counts, _ = np.histogram(v, bins=HIST_BINS, range=(low, high))
    share = counts / v.size
    mean = v.mean()
    centred = v - mean
    m2 = np.mean(centred**2)
    skewness = np.mean(centred**3) / m2**1.5 if m2 > 0 else 0.0
    kurtosis = np.mean(centred**4) / m2**2 if m2 > 0 else 0.0
    nonzero = share[share > 0]
    entropy = float(-(nonzero * np.log2(nonzero)).sum())
    percentiles = np.percentile(v, [10, 25, 50, 75, 90])
    located = np.concatenate([[mean, np.sqrt(m2)], percentiles]) / scale
    return np.concatenate([located, [skewness, kurtosis, entropy], share])


def slice_features(image: np.ndarray, hu_range) -> np.ndarray:
    """FEATURES of one preprocessed slice ([size, size] or [size, size, 3] in
    [-1, 1]): in HU inside the body when `hu_range` (the HU of -1 and 1) is
    known, else on the intensities of the whole slice."""
    unit = np.asarray(image, np.float64)
    if unit.ndim == 3:
        unit = unit[..., 0]
    low, high = (np.nan, np.nan) if hu_range is None else map(float, hu_range)
    if not (np.isfinite(low) and np.isfinite(high)):
        return first_order(unit, (-1.0, 1.0))
    hu = (unit + 1.0) * (high - low) / 2.0 + low  # common.ingest.policy.from_unit
    mask = body_mask(hu)
    values = hu[mask] if mask.any() else hu
    return first_order(values, WINDOW_HU, HU_SCALE)


def features(images: np.ndarray, hu_range: np.ndarray | None) -> np.ndarray:
    """[n, N_FEATURES] for a stack of slices and their HU ranges ([n, 2] or None)."""
    out = np.zeros((len(images), N_FEATURES))
    for i, image in enumerate(images):
        out[i] = slice_features(image, None if hu_range is None else hu_range[i])
    return out
