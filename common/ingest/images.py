"""Folders of PNG/JPEG slices: decoding and grouping into one series per patient.

Public COVID CT collections come this way; `image_labels` says which label and
patient each file has. Slices are ordered by file name (numbers compared as
numbers). Such images carry no HU, so their intensity is always the per-image
min-max and the lung slice policy keeps every slice.
"""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from common.ingest.cache import PACK_DTYPE
from common.ingest.config import IngestConfig
from common.ingest.image_labels import IMAGE_SUFFIXES, LABEL_WORDS
from common.ingest.packs import SeriesBuffer
from common.ingest.pixels import resize_stored
from common.ingest.policy import paper_unit_range
from common.ingest.reasons import Skip, short_error
from common.ingest.series import SeriesPlan, SliceRef
from common.ingest.worker import FileResult, WorkerSetup, skip_record


def is_image_layout(root: Path) -> bool:
    """True when some top folder is a label name (`COVID/`, `NonCOVID/`, ...)."""
    return any(
        child.is_dir() and child.name.lower() in LABEL_WORDS for child in root.iterdir()
    )


def process_image(
    rel: str,
    stat: list[int],
    key: str,
    data: bytes,
    setup: WorkerSetup,
    decode: bool,
    sink: SeriesBuffer,
) -> FileResult:
    """Worker step for an image file (same contract as `worker.process_file`).

    The record holds only what the bytes decide (a decode error): the label and
    patient come from the path or the labels CSV, which the caller resolves.
    """
    result = FileResult(rel, stat, key, {"header": None, "skip": None})
    if not rel.lower().endswith(IMAGE_SUFFIXES):
        return result  # not an image: the caller says so, decoding is wasted
    if not decode or key in setup.have:
        return result
    try:
        pixels = read_image(data, setup.config.max_decoded_mb)
    except Skip as skip:
        result.record["skip"] = skip_record(skip)
        return result
    result.pack, result.row = sink.append(cached_slice(pixels, setup.config)[None])
    result.ranges = [[float("nan"), float("nan")]]  # no HU: no lung share
    return result


def cached_slice(pixels: np.ndarray, config: IngestConfig) -> np.ndarray:
    """An image as ingest caches it (and the model sees it): shrunk to the
    config's size, per-image min-max to [-1, 1], in the cache's dtype. Predict
    uses it too, so scoring sees exactly what training saw. With image-crop
    "centre" the image is first cut to its square centre."""
    if config.image_crop == "centre":
        pixels = centre_square(pixels)
    small = resize_stored(pixels, config.image_size)
    return paper_unit_range(small).astype(PACK_DTYPE)


def centre_square(pixels: np.ndarray) -> np.ndarray:
    """The largest square in the middle of a 2D image (the longer side cut
    evenly, the odd pixel off the end)."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side]


def read_image(data: bytes, max_decoded_mb: int) -> np.ndarray:
    """A greyscale image as a 2D array (16-bit PNGs keep their 16 bits)."""
    try:
        image = Image.open(BytesIO(data))
        width, height = image.size
        if width * height * 4 > max_decoded_mb * 2**20:
            raise Skip(
                "too-large",
                f"image is {width}x{height} pixels, above the {max_decoded_mb} MB "
                "limit (max-decoded-mb)",
            )
        if image.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
            image = image.convert("L")
        return np.asarray(image, dtype=np.float32)
    except Skip:
        raise
    except Exception as err:
        raise Skip("decode", f"not a readable image ({short_error(err)})") from None


def natural_key(text: str) -> list:
    """'slice10' after 'slice9': numbers in file names compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def image_plans(files: list[tuple[str, str, dict]]) -> list[SeriesPlan]:
    """One series per patient folder from (path, content key, image info)."""
    plans: dict[tuple[str, str], SeriesPlan] = {}
    for rel, key, info in sorted(files, key=lambda item: natural_key(item[0])):
        group = (info["patient_id"], info["label_dir"])
        plan = plans.get(group)
        if plan is None:
            plan = plans[group] = SeriesPlan(
                info["patient_id"],
                info["label_dir"],
                f"{info['label_dir']}/{info['patient_id']}",
                None,
                "image folder",
                None,
            )
        plan.slices.append(SliceRef(rel, key, 0, None, len(plan.slices)))
    return sorted(plans.values(), key=lambda p: (p.patient_id, p.series_uid))
