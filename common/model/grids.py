"""Image grids that show what the GAN does: samples G(z) and reconstructions G(E(x)).

Samples carry no patient data (the server may write them); reconstructions show
real slices, so only a site or a centralised run on its own data writes those.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

LABEL_CHAR_PX = 7  # width per character of PIL's default bitmap font, and a margin


def save_png(path: Path, rows: list[np.ndarray], labels: list[str] | None = None):
    """Rows of [n, h, w, c] images in [-1, 1] as one grey PNG, written atomically;
    with `labels`, each row's label in a white margin on its left."""
    from PIL import Image, ImageDraw

    strips = [np.concatenate(list(row[..., 0]), axis=1) for row in rows]
    grid = ((np.concatenate(strips, axis=0) + 1.0) * 127.5).clip(0, 255)
    image = Image.fromarray(grid.astype(np.uint8))
    if labels:
        if len(labels) != len(rows):
            raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
        margin = LABEL_CHAR_PX * (max(len(label) for label in labels) + 2)
        labelled = Image.new("L", (image.width + margin, image.height), 255)
        labelled.paste(image, (margin, 0))
        draw, top = ImageDraw.Draw(labelled), 0
        for label, strip in zip(labels, strips, strict=True):
            height = strip.shape[0]
            draw.text((LABEL_CHAR_PX, top + height // 2 - 5), label, fill=0)
            top += height
        image = labelled
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def save_samples(path: Path, model, n: int = 8, seed: int = 0) -> None:
    """G(z) for a fixed set of z, so rounds can be compared by eye."""
    z = np.random.default_rng(seed).standard_normal((n, model.preset.z_dim))
    save_png(path, [np.asarray(model.generator(z.astype(np.float32)))])


def reconstruction_rows(model, images: np.ndarray) -> list[np.ndarray]:
    """Two rows: the real slices at G's size, then G(E(x))."""
    from common.model.bigbigan import downsample_for_d

    real = np.asarray(downsample_for_d(images, model.preset))
    return [real, np.asarray(model.reconstruct(images))]


def save_reconstructions(path: Path, model, images: np.ndarray) -> None:
    """Top row: real slices at G's size; bottom row: G(E(x))."""
    save_png(path, reconstruction_rows(model, images))


def save_reconstruction_groups(path: Path, model, groups: dict[str, np.ndarray]):
    """A pair of rows (real, G(E(x))) per group, e.g. per site, in one PNG,
    each row labelled with its group and what it shows; shorter groups are
    padded with black."""
    width = max(len(images) for images in groups.values())
    rows, labels = [], []
    for name, images in groups.items():
        for row, what in zip(
            reconstruction_rows(model, images), ("real", "G(E(x))"), strict=True
        ):
            pad = np.full((width - len(row), *row.shape[1:]), -1.0, row.dtype)
            rows.append(np.concatenate([row, pad]))
            labels.append(f"{name}: {what}")
    save_png(path, rows, labels)


def one_slice_per_patient(slices, n: int) -> np.ndarray:
    """The middle slice of each of the first `n` patients of a SliceSet."""
    picked = []
    for patient in np.unique(slices.patient)[:n]:
        rows = np.flatnonzero(slices.patient == patient)
        picked.append(rows[len(rows) // 2])
    return slices.images[np.asarray(picked, dtype=int)]
