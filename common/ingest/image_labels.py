"""Labels and patients of image files, in any folder layout.

A label comes from a labels CSV (a row per file, per glob of files or per
patient) or, without one, from the folders' names: a label folder (`COVID/`,
`NonCOVID/`) or a label word inside a folder's name (`person001_COVID19`,
`NonCOVID_bacterial_pneumonia`). A patient is the CSV's `patient_id` for the
file, else the folder after the last label folder, else the file's own folder
(`images/a.png`: each image is then its own patient if that folder turns out
to hold both classes, see `pipeline._image_plans`), else the file itself.
"""

from __future__ import annotations

import csv
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from common.ingest.labels import LabelProblem, decode_labels
from common.ingest.reasons import IngestError, Skip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Folder names (and words inside them) that name a class; 1 = COVID-19.
LABEL_WORDS = {
    "1": 1,
    "covid": 1,
    "covid-19": 1,
    "covid19": 1,
    "ct_covid": 1,
    "0": 0,
    "non-covid": 0,
    "noncovid": 0,
    "non_covid": 0,
    "ct_noncovid": 0,
    "noncovid19": 0,
    "other": 0,
    "pneumonia": 0,
    "bacterial": 0,
    "cap": 0,
}
FILE_COLUMNS = ("file", "path", "filename", "image")
PATIENT_COLUMNS = ("patient_id", "patient")
_SAMPLE = 2000  # files looked at to tell an image folder from a DICOM export


def parse_label_map(text: str | None) -> dict[str, int]:
    """`covid=1,pneumonia=0` as {"covid": 1, "pneumonia": 0} (keys lower-case)."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        word, sep, value = item.partition("=")
        if not sep or not word.strip() or value.strip() not in ("0", "1"):
            raise IngestError(
                f"--label-map item {item.strip()!r} must be WORD=0 or WORD=1 "
                "(e.g. covid=1,pneumonia=0)"
            )
        out[word.strip().lower()] = int(value)
    return out


def holds_images(site: Path) -> bool:
    """True when the site's files are mostly PNG/JPEG/TIFF/BMP (first few
    thousand files, in walk order): an image collection, not a DICOM export
    (whose files often have no suffix at all)."""
    images = others = 0
    for path in sorted(site.rglob("*")):
        if images + others >= _SAMPLE:
            break
        if not path.is_file() or path.suffix.lower() in (".csv", ".txt", ".md"):
            continue
        if path.name.lower().endswith(IMAGE_SUFFIXES):
            images += 1
        else:
            others += 1
    return images > others


def label_words(folder: str, words: dict[str, int]) -> set[int]:
    """The classes a folder's name names: the whole name, else its words
    (`non_covid` and `non-covid` read as one word, `noncovid`)."""
    name = folder.lower()
    if name in words:
        return {words[name]}
    name = re.sub(r"\bnon[\s_\-]+", "non", name)
    # digits alone name a class only as a whole folder name (`0/`, `1/`), never
    # inside one (`patient-0`)
    tokens = re.split(r"[^a-z0-9]+", name)
    return {words[t] for t in tokens if t in words and not t.isdigit()}


@dataclass(frozen=True)
class ImageRow:
    """A labels CSV row: a file (path or glob) or a patient, and its label."""

    line: int
    label: int
    pattern: str = ""  # a file path relative to the site, or a glob
    patient_id: str = ""


@dataclass
class ImageLabels:
    """A site's image labels: CSV rows (if any) and the label words."""

    path: Path | None = None
    words: dict[str, int] = field(default_factory=lambda: dict(LABEL_WORDS))
    files: dict[str, ImageRow] = field(default_factory=dict)
    globs: list[ImageRow] = field(default_factory=list)
    patients: dict[str, ImageRow] = field(default_factory=dict)
    problems: list[LabelProblem] = field(default_factory=list)
    matched: set[int] = field(default_factory=set)  # lines that matched a file

    def info(self, rel: str) -> dict:
        """Label, patient and group folder of a file, or `Skip` saying why not."""
        if not rel.lower().endswith(IMAGE_SUFFIXES):
            raise Skip("not-image", f"not an image file ({', '.join(IMAGE_SUFFIXES)})")
        parts = PurePath(rel).parts
        folders = parts[:-1]
        row = self._file_row(rel)
        patient, source = self.patient_of(parts)
        if row is not None and row.patient_id:
            patient, source = row.patient_id, "csv"
        if row is None and self.path is not None:
            row = self.patients.get(patient)
            if row is None:
                raise Skip(
                    "no-label",
                    f"no row in {self.path.name} for this file or its patient "
                    f"{patient!r}; add 'file,label' (a path or glob) or "
                    "'patient_id,label'",
                )
        if row is not None:
            self.matched.add(row.line)
            label = row.label
        else:
            label = self.folder_label(folders)
        top = folders[0] if folders and folders[0].lower() in self.words else None
        group = top or (str(PurePath(*folders)) if folders else ".")
        return {
            "label_dir": group,
            "label": label,
            "patient_id": patient,
            "patient_from": source,
        }

    def unmatched(self) -> list[LabelProblem]:
        """CSV rows of files that matched no image file."""
        rows = [*self.files.values(), *self.globs]
        return [
            LabelProblem(
                "unknown-file",
                row.line,
                row.patient_id,
                f"{self.path}:{row.line}: {row.pattern!r} matches no image file "
                "in the site folder (paths are relative to it)",
            )
            for row in sorted(rows, key=lambda r: r.line)
            if row.line not in self.matched
        ]

    def _file_row(self, rel: str) -> ImageRow | None:
        row = self.files.get(rel)
        if row is not None:
            return row
        hits = [g for g in self.globs if fnmatch.fnmatchcase(rel, g.pattern)]
        if len({g.label for g in hits}) > 1:
            lines = ", ".join(str(g.line) for g in hits)
            raise Skip(
                "label-conflict",
                f"globs on lines {lines} of {self.path.name} give it both labels",
            )
        return hits[0] if hits else None

    def patient_of(self, parts: tuple[str, ...]) -> tuple[str, str]:
        """(patient, how it was found): "patient-folder" (the folder after a
        label folder), "folder" (the file's own folders, no label folder: a
        guess `split_mixed_folders` may undo) or "file"."""
        folders = parts[:-1]
        labelled = [i for i, f in enumerate(folders) if f.lower() in self.words]
        if labelled:
            after = labelled[-1] + 1
            if after < len(folders):
                return folders[after], "patient-folder"
            return str(PurePath(*parts)), "file"  # flat label folders
        if folders:
            return str(PurePath(*folders)), "folder"
        return parts[-1], "file"

    def folder_label(self, folders: tuple[str, ...]) -> int:
        found: dict[int, str] = {}
        for folder in folders:
            for label in label_words(folder, self.words):
                found.setdefault(label, folder)
        if len(found) == 2:
            raise Skip(
                "label-conflict",
                f"folder names give both classes ({found[1]!r} COVID-19, "
                f"{found[0]!r} other); label these files in a CSV (--labels)",
            )
        if not found:
            raise Skip(
                "no-label",
                "no label: no folder is a label folder (COVID/, NonCOVID/, ...) "
                "or has a label word in its name; give a labels CSV (--labels)",
            )
        return next(iter(found))


def read_image_labels(
    path: Path | None, label_map: dict[str, int] | None = None
) -> ImageLabels:
    """A labels CSV for image files (or none: folder names only).

    Columns: `label`, and `file` (a path relative to the site or a glob) and/or
    `patient_id`. Label values are 0/1 or `label_map` words (any case); bad
    rows become problems named by line, like DICOM labels.
    """
    labels = ImageLabels(path, {**LABEL_WORDS, **(label_map or {})})
    if path is None:
        return labels
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: labels file not found")
    text = decode_labels(path, path.read_bytes())
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = max(",;\t", key=first.count) if first else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = [name.strip().lower() for name in next(reader, [])]
    file_col = next((header.index(c) for c in FILE_COLUMNS if c in header), None)
    pid_col = next((header.index(c) for c in PATIENT_COLUMNS if c in header), None)
    if "label" not in header or (file_col is None and pid_col is None):
        raise IngestError(
            f"{path}:1: the header must name a label column and a file or "
            f"patient_id column (found {header})"
        )
    values = {"0": 0, "1": 1, **(label_map or {})}
    label_col = header.index("label")
    seen: dict[str, ImageRow] = {}
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue

        def cell(col: int | None, row=row) -> str:
            return row[col].strip() if col is not None and col < len(row) else ""

        pattern = cell(file_col).replace("\\", "/").lstrip("./")
        pid, raw = cell(pid_col), cell(label_col)
        key = pattern or pid
        where = f"{path}:{line}"
        if not key:
            labels.problems.append(
                LabelProblem("empty-id", line, "", f"{where}: no file or patient_id")
            )
            continue
        if raw.lower() not in values:
            words = ", ".join(sorted(values))
            labels.problems.append(
                LabelProblem(
                    "bad-label",
                    line,
                    pid,
                    f"{where}: label {raw!r} of {key!r} is not one of {words} "
                    "(map words with --label-map covid=1,pneumonia=0); row ignored",
                )
            )
            continue
        entry = ImageRow(line, values[raw.lower()], pattern, pid)
        earlier = seen.get(key)
        if earlier is not None:
            same = earlier.label == entry.label
            labels.problems.append(
                LabelProblem(
                    "duplicate-id",
                    line,
                    pid,
                    f"{where}: {key!r} is already on line {earlier.line}"
                    + ("; row ignored" if same else " with the other label; not used"),
                )
            )
            if not same:
                _drop(labels, earlier)
            continue
        seen[key] = entry
        if not pattern:
            labels.patients[pid] = entry
        elif any(ch in pattern for ch in "*?["):
            labels.globs.append(entry)
        else:
            labels.files[pattern] = entry
    return labels


def _drop(labels: ImageLabels, row: ImageRow) -> None:
    """A conflicting row is used by nobody (a later third row is ignored too)."""
    if not row.pattern:
        labels.patients.pop(row.patient_id, None)
    elif row in labels.globs:
        labels.globs.remove(row)
    else:
        labels.files.pop(row.pattern, None)


def split_mixed_folders(
    files: list[tuple[str, str, dict]],
) -> list[tuple[str, str, dict]]:
    """(path, key, info) with each image its own patient where the patient was
    only its folder and that folder holds both labels."""
    labels: dict[str, set[int]] = {}
    for _, _, info in files:
        if info["patient_from"] == "folder":
            labels.setdefault(info["patient_id"], set()).add(info["label"])
    mixed = {pid for pid, found in labels.items() if len(found) > 1}
    out = []
    for rel, key, info in files:
        if info["patient_from"] == "folder" and info["patient_id"] in mixed:
            info = {**info, "patient_id": rel, "patient_from": "file"}
        out.append((rel, key, info))
    return out
