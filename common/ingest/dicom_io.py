"""Read one CT slice to Hounsfield units and turn it into the model's input.

The paper's preprocessing: HU via RescaleSlope/Intercept, outside-field-of-view
padding replaced by the smallest real value, values clipped at 3000 when the
range exceeds 4000, per-image min-max to [-1, 1], one channel repeated to three.
The implementation is shared with site ingest (`common.ingest.pixels` and
`common.ingest.policy`); these are its one-file entry points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.ingest.checks import check_slice
from common.ingest.config import IngestConfig
from common.ingest.header_fields import summarize
from common.ingest.headers import quiet_pydicom, read_dataset
from common.ingest.pixels import PADDING_HU, hu_full, resize_stored
from common.ingest.policy import HU_CLIP, HU_RANGE_FOR_CLIP, paper_unit_range
from common.ingest.reasons import Skip

__all__ = [
    "CT_IMAGE_STORAGE",
    "HU_CLIP",
    "HU_RANGE_FOR_CLIP",
    "PADDING_HU_THRESHOLD",
    "DicomReadError",
    "hu_to_unit_range",
    "load_slice",
    "read_hu",
    "resize",
    "to_model_input",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PADDING_HU_THRESHOLD = PADDING_HU  # real tissue/air is never below ~-1024 HU


class DicomReadError(ValueError):
    """A file cannot be used as a CT slice; the message names the file and why."""


def read_hu(path: Path) -> np.ndarray:
    """Return the slice at `path` in HU (float32), outside-FOV padding removed."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DicomReadError(f"{path}: cannot be read ({err.strerror})") from err
    try:
        with quiet_pydicom():
            parsed = read_dataset(data, Path(path).name)
            header = summarize(parsed)
            check_slice(header, IngestConfig())
            if header.frames != 1:
                raise Skip(
                    "bad-geometry",
                    f"expected one 2D slice, got {header.frames} frames",
                )
            return hu_full(parsed, header)[0]
    except Skip as skip:
        raise DicomReadError(f"{path}: {skip.detail}") from None


def hu_to_unit_range(hu: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling to [-1, 1] (the paper's intensity policy)."""
    return paper_unit_range(hu)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """A 2D image as size x size float32: area mean when shrinking, else
    bilinear; a non-square image is first padded to a square with its minimum."""
    return resize_stored(np.asarray(image), size)


def to_model_input(hu: np.ndarray, size: int) -> np.ndarray:
    """HU slice -> [size, size, 3] float32 in [-1, 1], as the encoder expects."""
    unit = hu_to_unit_range(resize(hu, size))
    return np.repeat(np.clip(unit, -1.0, 1.0)[..., None], 3, axis=-1)


def load_slice(path: Path, size: int) -> np.ndarray:
    """Read and preprocess one slice file."""
    return to_model_input(read_hu(path), size)
