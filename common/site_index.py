"""Index a site: which patients it has, their label, and their slice files in order.

A site is a folder holding DICOM files (any depth) and `labels.csv` with the columns
`patient_id,label` (1 = COVID-19, 0 = other pneumonia). Only headers are read here.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom

LABELS_FILE = "labels.csv"
log = logging.getLogger(__name__)


class SiteError(ValueError):
    """The site folder or its labels cannot be used; the message says where."""


@dataclass(frozen=True)
class Patient:
    patient_id: str
    label: int
    files: tuple[Path, ...]  # ordered by slice position


@dataclass(frozen=True)
class SiteIndex:
    root: Path
    patients: tuple[Patient, ...]

    @property
    def n_slices(self) -> int:
        return sum(len(p.files) for p in self.patients)


def read_labels(path: Path) -> dict[str, int]:
    """Read `patient_id,label`; errors name the line."""
    if not path.is_file():
        raise SiteError(f"{path}: labels file not found")
    labels: dict[str, int] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"patient_id", "label"} <= set(
            reader.fieldnames
        ):
            raise SiteError(f"{path}: header must be 'patient_id,label'")
        for line, row in enumerate(reader, start=2):
            pid, label = (row["patient_id"] or "").strip(), (row["label"] or "").strip()
            if not pid:
                raise SiteError(f"{path}:{line}: empty patient_id")
            if label not in ("0", "1"):
                raise SiteError(f"{path}:{line}: label {label!r} must be 0 or 1")
            if pid in labels:
                raise SiteError(f"{path}:{line}: duplicate patient_id {pid!r}")
            labels[pid] = int(label)
    return labels


def index_site(root: Path) -> SiteIndex:
    """Group the site's CT slices by patient, ordered along the body axis."""
    root = Path(root)
    if not root.is_dir():
        raise SiteError(f"{root}: site folder not found")
    labels = read_labels(root / LABELS_FILE)
    slices: dict[str, list[tuple[float, Path]]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name == LABELS_FILE:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            log.warning("%s: skipped, not a readable DICOM file", path)
            continue
        if ds.get("Modality") != "CT":
            log.warning("%s: skipped, Modality is %s", path, ds.get("Modality"))
            continue
        position = ds.get("ImagePositionPatient")
        z = float(position[2]) if position else float(ds.get("InstanceNumber", 0))
        slices.setdefault(str(ds.PatientID), []).append((z, path))
    unlabeled = sorted(set(slices) - set(labels))
    if unlabeled:
        log.warning("%s: images without a label, skipped: %s", root, unlabeled)
    missing = sorted(set(labels) - set(slices))
    if missing:
        log.warning("%s: labelled patients without images: %s", root, missing)
    patients = tuple(
        Patient(pid, labels[pid], tuple(p for _, p in sorted(slices[pid])))
        for pid in sorted(labels)
        if pid in slices
    )
    if not patients:
        raise SiteError(f"{root}: no labelled patient has a readable CT slice")
    return SiteIndex(root, patients)
