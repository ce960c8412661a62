"""Image files (PNG/JPEG/...) to score: a file or a folder, grouped by patient.

The slices are preprocessed exactly as ingest caches them for training
(`common.ingest.images.cached_slice`, with the run's ingest config), without a
labels file: the label is what is being predicted. A folder's patient is the
folder holding the image (the file itself at the top of the folder given).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.ingest.config import IngestConfig
from common.ingest.image_labels import IMAGE_SUFFIXES, holds_images
from common.ingest.images import cached_slice, natural_key, read_image
from common.ingest.reasons import Skip


class InputError(ValueError):
    """The input cannot be scored; the message names the file or folder."""


def is_image_input(path: Path) -> bool:
    """True for an image file, or a folder of mostly image files."""
    path = Path(path)
    if path.is_file():
        return path.name.lower().endswith(IMAGE_SUFFIXES)
    return path.is_dir() and holds_images(path)


def image_patients(path: Path, config: IngestConfig) -> dict[str, np.ndarray]:
    """Patient -> slices (n, size, size) float32 in [-1, 1], by patient name."""
    path = Path(path)
    if path.is_file():
        files, root = [path], path.parent
    else:
        files = sorted(
            (f for f in path.rglob("*") if f.is_file()),
            key=lambda f: natural_key(str(f)),
        )
        files = [f for f in files if f.name.lower().endswith(IMAGE_SUFFIXES)]
        root = path
    groups: dict[str, list[np.ndarray]] = {}
    for file in files:
        try:
            pixels = read_image(file.read_bytes(), config.max_decoded_mb)
        except Skip as skip:
            raise InputError(f"{file}: {skip.detail}") from None
        except OSError as err:
            raise InputError(f"{file}: cannot be read ({err.strerror})") from None
        folder = file.parent.relative_to(root)
        patient = str(folder) if str(folder) != "." else file.name
        groups.setdefault(patient, []).append(cached_slice(pixels, config))
    if not groups:
        raise InputError(f"{path}: no image file ({', '.join(IMAGE_SUFFIXES)})")
    return {
        pid: np.stack(slices).astype(np.float32)
        for pid, slices in sorted(groups.items())
    }
