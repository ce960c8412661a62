"""The site's `labels.csv` (patient_id,label): rows, and problems by line number."""

from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass, field
from pathlib import Path

from common.ingest.reasons import IngestError

LABEL_VALUES = {"0": 0, "1": 1}  # 1 = COVID-19, 0 = other pneumonia


@dataclass(frozen=True)
class LabelRow:
    patient_id: str
    label: int
    line: int


@dataclass(frozen=True)
class LabelProblem:
    """One problem with a labels row; `message` starts with `file:line:`."""

    code: str  # bad-label, empty-id, duplicate-id, unknown-patient, no-usable-slice
    line: int
    patient_id: str
    message: str


@dataclass
class Labels:
    path: Path
    rows: dict[str, LabelRow] = field(default_factory=dict)
    problems: list[LabelProblem] = field(default_factory=list)

    def label_of(self, patient_id: str) -> int | None:
        row = self.rows.get(patient_id)
        return None if row is None else row.label


def decode_labels(path: Path, raw: bytes) -> str:
    """The labels file's text, whatever a spreadsheet saved it as.

    UTF-8 (with or without a BOM) and UTF-16 with a BOM (Excel's "Unicode
    text") are decoded as such; anything else that is not UTF-8 is read as
    Windows-1252 (Excel's "CSV" on Western-European Windows). What none of
    these can decode is named in one line.
    """
    if raw.startswith(codecs.BOM_UTF8):
        encoding, body = "utf-8", raw[len(codecs.BOM_UTF8) :]
    elif raw.startswith(codecs.BOM_UTF16_LE):
        encoding, body = "utf-16-le", raw[len(codecs.BOM_UTF16_LE) :]
    elif raw.startswith(codecs.BOM_UTF16_BE):
        encoding, body = "utf-16-be", raw[len(codecs.BOM_UTF16_BE) :]
    else:
        if b"\x00" in raw:
            raise IngestError(
                f"{path}: holds NUL bytes (UTF-16 without a byte-order mark?); "
                "save it as CSV UTF-8"
            )
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            encoding, body = "cp1252", raw
    try:
        return body.decode(encoding)
    except UnicodeDecodeError as err:
        raise IngestError(
            f"{path}: byte {err.start} cannot be read as {encoding}; "
            "save it as CSV UTF-8"
        ) from None


def read_labels(path: Path) -> Labels:
    """Parse the labels file; unusable rows become problems, not exceptions.

    Only a missing file or a header without the two columns stops ingest. Comma,
    semicolon (spreadsheets in many locales) and tab separate columns.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: labels file not found")
    labels = Labels(path)
    conflicted: set[str] = set()
    text = decode_labels(path, path.read_bytes())
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = max(",;\t", key=first.count) if first else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = [name.strip().lower() for name in next(reader, [])]
    if "patient_id" not in header or "label" not in header:
        raise IngestError(
            f"{path}:1: the header must name the columns patient_id and label "
            f"(found {header})"
        )
    pid_col, label_col = header.index("patient_id"), header.index("label")
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank lines are harmless
        pid = row[pid_col].strip() if pid_col < len(row) else ""
        raw = row[label_col].strip() if label_col < len(row) else ""
        where = f"{path}:{line}"
        if not pid:
            labels.problems.append(
                LabelProblem(
                    "empty-id", line, "", f"{where}: empty patient_id; row ignored"
                )
            )
            continue
        if raw not in LABEL_VALUES:
            labels.problems.append(
                LabelProblem(
                    "bad-label",
                    line,
                    pid,
                    f"{where}: label {raw!r} of patient {pid!r} must be 0 (other "
                    "pneumonia) or 1 (COVID-19); row ignored",
                )
            )
            continue
        label = LABEL_VALUES[raw]
        if pid in conflicted:
            message = f"{where}: patient {pid!r} is listed again; not used"
            labels.problems.append(LabelProblem("duplicate-id", line, pid, message))
            continue
        earlier = labels.rows.get(pid)
        if earlier is None:
            labels.rows[pid] = LabelRow(pid, label, line)
        elif earlier.label == label:
            labels.problems.append(
                LabelProblem(
                    "duplicate-id",
                    line,
                    pid,
                    f"{where}: patient {pid!r} is already on line {earlier.line}; "
                    "this row is ignored",
                )
            )
        else:
            del labels.rows[pid]
            conflicted.add(pid)
            labels.problems.append(
                LabelProblem(
                    "duplicate-id",
                    line,
                    pid,
                    f"{where}: patient {pid!r} has label {label} here but "
                    f"{earlier.label} on line {earlier.line}; the patient is not "
                    "used until one row is removed",
                )
            )
    return labels


def unmatched(
    labels: Labels, with_files: set[str], usable: set[str]
) -> list[LabelProblem]:
    """Rows whose patient has no file, or files but no usable slice."""
    out = []
    for pid, row in sorted(labels.rows.items(), key=lambda item: item[1].line):
        where = f"{labels.path}:{row.line}"
        if pid not in with_files:
            out.append(
                LabelProblem(
                    "unknown-patient",
                    row.line,
                    pid,
                    f"{where}: patient {pid!r} has no file in the site folder "
                    "(check the PatientID in the DICOM headers)",
                )
            )
        elif pid not in usable:
            out.append(
                LabelProblem(
                    "no-usable-slice",
                    row.line,
                    pid,
                    f"{where}: patient {pid!r} has files but no usable CT slice "
                    "(see this patient's files in ingest_report.json)",
                )
            )
    return out
