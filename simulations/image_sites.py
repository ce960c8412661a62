"""The `real-images` scenario's sites: a labelled image collection, linked per site.

Any layout ingest reads (label folders, label words in folder names, flat
label folders) is accepted; the manifest names each patient's site and, in its
label column if it has one, its label (0/1 or a label word), which wins over
the folders' names. Each site gets `<site>/COVID|NonCOVID/<patient>/<file>`
as hard links (copies across file systems): the collection is only read.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path, PurePath

from common.ingest.image_labels import IMAGE_SUFFIXES, LABEL_WORDS, ImageLabels
from common.ingest.reasons import Skip

LABEL_FOLDERS = {1: "COVID", 0: "NonCOVID"}


class ImageSiteError(ValueError):
    """The collection or its manifest cannot make sites; the message says where."""


def read_manifest(
    path: Path, patient_column: str, site_column: str, label_column: str
) -> dict[str, tuple[str, int | None]]:
    """patient -> (site, label or None) from the manifest CSV."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for column in (patient_column, site_column):
            if column not in columns:
                raise ImageSiteError(f"{path}: no column {column!r} (has {columns})")
        labelled = bool(label_column) and label_column in columns
        out: dict[str, tuple[str, int | None]] = {}
        for line, row in enumerate(reader, start=2):
            patient, site = row[patient_column].strip(), row[site_column].strip()
            if not patient or not site:
                raise ImageSiteError(f"{path}:{line}: empty patient or site")
            label = _label(row[label_column], path, line) if labelled else None
            if patient in out and out[patient] != (site, label):
                raise ImageSiteError(
                    f"{path}:{line}: patient {patient} is already listed with site "
                    f"{out[patient][0]}, label {out[patient][1]}: a patient belongs "
                    "to one site and has one label"
                )
            out[patient] = (site, label)
    return out


def link_sites(
    root: Path, manifest: Path, rows: dict[str, tuple[str, int | None]], data: Path
) -> set[str]:
    """Link every image of a listed patient under `data/<site>/`; the sites made."""
    labels = ImageLabels()
    unlisted: list[str] = []
    seen: dict[str, int] = {}
    links: list[tuple[Path, Path]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if not rel.lower().endswith(IMAGE_SUFFIXES):
            continue
        patient, _ = labels.patient_of(PurePath(rel).parts)
        if patient not in rows:
            unlisted.append(patient)
            continue
        site, label = rows[patient]
        if label is None:
            try:
                label = labels.folder_label(PurePath(rel).parts[:-1])
            except Skip as skip:
                raise ImageSiteError(
                    f"{root / rel}: {skip.detail} (or give the manifest a label column)"
                ) from None
        if seen.setdefault(patient, label) != label:
            raise ImageSiteError(
                f"{root}: patient {patient} has images under both labels: "
                "one patient, one label"
            )
        folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", patient)
        links.append((path, data / site / LABEL_FOLDERS[label] / folder / path.name))
    if unlisted:
        shown = sorted(set(unlisted))
        raise ImageSiteError(
            f"{manifest} does not list {len(shown)} patient(s) of {root}, e.g. "
            f"{shown[:3]}: add them with their site"
        )
    for source, target in links:
        target.parent.mkdir(parents=True, exist_ok=True)
        _link(source, target)
    return {site for site, _ in (rows[p] for p in seen)}


def _link(source: Path, target: Path) -> None:
    """A hard link (no copy; ingest reads a site's regular files only, never a
    symlink out of it), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _label(raw: str | None, path: Path, line: int) -> int:
    value = (raw or "").strip().lower()
    if value not in LABEL_WORDS:
        raise ImageSiteError(
            f"{path}:{line}: label {raw!r} must be 0, 1 or a label word "
            f"({', '.join(sorted(w for w in LABEL_WORDS if not w.isdigit()))})"
        )
    return LABEL_WORDS[value]
