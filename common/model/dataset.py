"""Preprocessed arrays for a site's splits, and the tf.data pipeline over them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.ingest.result import IngestedPatient

if TYPE_CHECKING:
    from common.ingest.site_index import Patient


@dataclass(frozen=True)
class SliceSet:
    """Slices of some patients: images, slice labels, and the patient of each."""

    images: np.ndarray  # [n, size, size, 3] float32 in [-1, 1]
    labels: np.ndarray  # [n] int, per slice (the patient's label)
    patient: np.ndarray  # [n] int, index into the group's patient list
    # [n, 2] the HU each slice's -1 and 1 stand for (NaN: unknown, e.g. image
    # folders); None when the slices were not read through the ingest cache
    hu_range: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def slices_from_ingest(
    patients: Sequence[IngestedPatient], size: int, max_per_patient: int = 0
) -> SliceSet:
    """The cached slices of ingested patients (central ones if capped).

    The cache holds one channel in float16; the model wants three in float32.
    """
    images, labels, owner, ranges = [], [], [], []
    for index, patient in enumerate(patients):
        slices = patient.load(max_per_patient)
        ranges.append(patient.load_ranges(max_per_patient))
        if slices.shape[1:] != (size, size):
            raise ValueError(
                f"patient {patient.patient_id}: cached slices are "
                f"{slices.shape[1]}px, the model needs {size}px"
            )
        images.append(slices)
        labels.append(np.full(len(slices), patient.label))
        owner.append(np.full(len(slices), index))
    if not images:
        return _empty(size)
    stacked = np.concatenate(images)
    return SliceSet(
        np.repeat(stacked[..., None], 3, axis=-1),
        np.concatenate(labels).astype(int),
        np.concatenate(owner).astype(int),
        np.concatenate(ranges),
    )


def load_slices(
    patients: list[Patient], size: int, max_per_patient: int = 0
) -> SliceSet:
    """Read and preprocess the slices of `patients` from their files (no cache)."""
    from common.ingest.dicom_io import load_slice  # pydicom + scipy: only when reading

    images, labels, owner = [], [], []
    for index, patient in enumerate(patients):
        files = _central(patient.files, max_per_patient)
        for path in files:
            images.append(load_slice(path, size))
            labels.append(patient.label)
            owner.append(index)
    if not images:
        return _empty(size)
    return SliceSet(np.stack(images), np.asarray(labels), np.asarray(owner))


def _empty(size: int) -> SliceSet:
    return SliceSet(
        np.zeros((0, size, size, 3), np.float32), np.zeros(0, int), np.zeros(0, int)
    )


def _central(files: tuple, limit: int) -> tuple:
    if limit <= 0 or len(files) <= limit:
        return files
    start = (len(files) - limit) // 2
    return files[start : start + limit]


def training_batches(images: np.ndarray, batch_size: int, seed: int):
    """A shuffled tf.data pipeline of full batches (the GAN step needs them)."""
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices(images)
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
