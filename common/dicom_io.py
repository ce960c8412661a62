"""Read one CT slice to Hounsfield units and turn it into the model's input.

The paper's preprocessing: HU via RescaleSlope/Intercept, outside-field-of-view
padding replaced by the next smallest value, values clipped at 3000 when the range
exceeds 4000, per-image min-max to [-1, 1], one channel repeated to three.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PADDING_HU_THRESHOLD = -1500.0  # real tissue/air is never below ~-1024 HU
HU_CLIP = 3000.0
HU_RANGE_FOR_CLIP = 4000.0


class DicomReadError(ValueError):
    """A file cannot be used as a CT slice; the message names the file and why."""


def read_hu(path: Path) -> np.ndarray:
    """Return the slice at `path` in HU (float32), outside-FOV padding removed."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises many kinds for broken files
        raise DicomReadError(f"{path}: not a readable DICOM file ({err})") from err
    if ds.get("Modality", "CT") != "CT":
        raise DicomReadError(f"{path}: Modality is {ds.Modality}, expected CT")
    if "PixelData" not in ds:
        raise DicomReadError(f"{path}: has no pixel data")
    try:
        raw = ds.pixel_array.astype(np.float32)
    except Exception as err:
        raise DicomReadError(f"{path}: pixel data cannot be decoded ({err})") from err
    if raw.ndim != 2:
        raise DicomReadError(f"{path}: expected one 2D slice, got shape {raw.shape}")
    padding = _padding_mask(ds, raw)
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    hu = raw * slope + intercept
    return _fill_padding(hu, padding | (hu < PADDING_HU_THRESHOLD))


def _padding_mask(ds: pydicom.Dataset, raw: np.ndarray) -> np.ndarray:
    """Pixels flagged by PixelPaddingValue (stored value, before rescale)."""
    if "PixelPaddingValue" not in ds:
        return np.zeros(raw.shape, dtype=bool)
    return raw == float(ds.PixelPaddingValue)


def _fill_padding(hu: np.ndarray, padding: np.ndarray) -> np.ndarray:
    """Replace padding by the smallest real value, so min-max ignores it."""
    if padding.any() and not padding.all():
        hu = hu.copy()
        hu[padding] = hu[~padding].min()
    return hu


def hu_to_unit_range(hu: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling to [-1, 1] (the paper's intensity policy)."""
    hu = hu.astype(np.float32)
    if hu.max() - hu.min() > HU_RANGE_FOR_CLIP:
        hu = np.minimum(hu, HU_CLIP)
    low, high = float(hu.min()), float(hu.max())
    if high - low < 1e-6:
        return np.zeros_like(hu)
    return (hu - low) / (high - low) * 2.0 - 1.0


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2D float image to size x size (area-averaging when shrinking)."""
    if image.shape == (size, size):
        return image.astype(np.float32)
    shrinking = min(image.shape) > size
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize(
        (size, size), method
    )
    return np.asarray(resized, dtype=np.float32)


def to_model_input(hu: np.ndarray, size: int) -> np.ndarray:
    """HU slice -> [size, size, 3] float32 in [-1, 1], as the encoder expects."""
    unit = hu_to_unit_range(resize(hu, size))
    return np.repeat(np.clip(unit, -1.0, 1.0)[..., None], 3, axis=-1)


def load_slice(path: Path, size: int) -> np.ndarray:
    """Read and preprocess one slice file."""
    return to_model_input(read_hu(path), size)
