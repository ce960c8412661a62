"""Split a site's patients into train/val/test, stratified by label, by patient."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from common.ingest.site_index import Patient


SPLITS = ("train", "val", "test")


def split_patients(
    patients: tuple[Patient, ...] | list[Patient],
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
) -> dict[str, list[Patient]]:
    """Assign every patient to exactly one split, per class, reproducibly.

    Within each class the counts are rounded from the fractions, so each split's
    class balance is within one patient of its target.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[Patient]] = {name: [] for name in SPLITS}
    for label in (0, 1):
        group = sorted(
            (p for p in patients if p.label == label), key=lambda p: p.patient_id
        )
        order = rng.permutation(len(group))
        n_val = int(round(len(group) * val))
        n_test = int(round(len(group) * test))
        for rank, index in enumerate(order):
            if rank < n_val:
                name = "val"
            elif rank < n_val + n_test:
                name = "test"
            else:
                name = "train"
            out[name].append(group[index])
    for name in SPLITS:
        out[name].sort(key=lambda p: p.patient_id)
    return out
