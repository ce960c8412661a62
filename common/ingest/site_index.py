"""Index a site: which patients it has, their label, and their slice files in order.

A site is a folder holding DICOM files (any depth) and `labels.csv` with the columns
`patient_id,label` (1 = COVID-19, 0 = other pneumonia). Only headers are read here;
training reads sites through `common.ingest.ingest_site`, which also caches pixels
and reports every skipped file. This index applies the same per-file checks and
series selection, without a cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.ingest.checks import check_usable
from common.ingest.config import IngestConfig
from common.ingest.header_fields import summarize
from common.ingest.headers import quiet_pydicom, read_dataset
from common.ingest.labels import read_labels as _read_label_rows
from common.ingest.reasons import IngestError, Skip
from common.ingest.scan import walk
from common.ingest.series import Candidate, plan_series

LABELS_FILE = "labels.csv"
log = logging.getLogger(__name__)

SiteError = IngestError  # one exception for "this site cannot be used"


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
    """Read `patient_id,label`; any unusable row is an error naming its line."""
    labels = _read_label_rows(Path(path))
    if labels.problems:
        raise SiteError(labels.problems[0].message)
    return {pid: row.label for pid, row in labels.rows.items()}


def index_site(root: Path, config: IngestConfig | None = None) -> SiteIndex:
    """Group the site's axial CT slices by patient, ordered along the body axis."""
    root = Path(root)
    if not root.is_dir():
        raise SiteError(f"{root}: site folder not found")
    config = config or IngestConfig()
    labels = read_labels(root / LABELS_FILE)
    files, _ = walk(root, {root / LABELS_FILE})
    candidates = []
    with quiet_pydicom():
        for rel in files:
            try:
                header = summarize(read_dataset((root / rel).read_bytes(), rel))
                check_usable(header, config)
            except (Skip, OSError) as err:
                log.warning("%s: skipped, %s", root / rel, getattr(err, "detail", err))
                continue
            candidates.append(Candidate(rel, rel, header))
    plans, _, _ = plan_series(candidates, config)
    slices: dict[str, list[Path]] = {}
    for plan in plans:
        ordered = dict.fromkeys(root / ref.rel for ref in plan.slices)
        slices.setdefault(plan.patient_id, []).extend(ordered)
    unlabeled = sorted(set(slices) - set(labels))
    if unlabeled:
        log.warning("%s: images without a label, skipped: %s", root, unlabeled)
    missing = sorted(set(labels) - set(slices))
    if missing:
        log.warning("%s: labelled patients without images: %s", root, missing)
    patients = tuple(
        Patient(pid, labels[pid], tuple(slices[pid]))
        for pid in sorted(labels)
        if pid in slices
    )
    if not patients:
        raise SiteError(f"{root}: no labelled patient has a readable CT slice")
    return SiteIndex(root, patients)
