"""Why a file or a label row is not used: short codes and their kind.

An *excluded* file is left out on purpose (a localiser, a dose report, an MR, the
DICOMDIR index): a normal PACS export has them. An *error* is something a hospital
should fix (a truncated copy, an unsupported compression, a patient without a
label); `--strict` stops at the first one.
"""

from __future__ import annotations

EXCLUDED = "excluded"
ERROR = "error"

REASONS: dict[str, tuple[str, str]] = {
    # code: (kind, what the summary calls it)
    "dicomdir": (EXCLUDED, "DICOMDIR index files"),
    "not-dicom": (EXCLUDED, "not DICOM files"),
    "sop-class": (EXCLUDED, "not CT images (SR, dose reports, RT, ...)"),
    "secondary-capture": (EXCLUDED, "secondary captures (screenshots)"),
    "modality": (EXCLUDED, "other modalities"),
    "localizer": (EXCLUDED, "localisers / scouts"),
    "derived": (EXCLUDED, "derived images (MIP, maps, not HU)"),
    "not-axial": (EXCLUDED, "non-axial reformats"),
    "other-series": (EXCLUDED, "other series of a kept study"),
    "slice-policy": (EXCLUDED, "slices left out by the slice policy"),
    "not-image": (EXCLUDED, "not image files (image folders)"),
    "empty": (ERROR, "empty files"),
    "unreadable": (ERROR, "unreadable files"),
    "special-file": (ERROR, "FIFOs, sockets and devices (not regular files, not read)"),
    "link-loop": (ERROR, "symbolic link loops (not followed)"),
    "link-outside": (ERROR, "links leading outside the site folder (not followed)"),
    "bad-dicom": (ERROR, "named like DICOM but not DICOM"),
    "corrupt-header": (ERROR, "corrupt DICOM headers"),
    "truncated": (ERROR, "truncated files"),
    "too-large": (ERROR, "files above the size limits"),
    "no-pixels": (ERROR, "no pixel data"),
    "bad-geometry": (ERROR, "missing or invalid image geometry"),
    "colour": (ERROR, "colour images where CT was expected"),
    "transfer-syntax": (ERROR, "unsupported transfer syntaxes"),
    "no-decoder": (ERROR, "compressions without an installed decoder"),
    "no-rescale": (ERROR, "no HU rescale"),
    "decode": (ERROR, "pixel data that cannot be decoded"),
    "duplicate-uid": (ERROR, "duplicate SOPInstanceUIDs"),
    "no-patient-id": (ERROR, "no PatientID"),
    "no-label": (ERROR, "patients missing from the labels"),
    "dicomdir-missing": (ERROR, "files listed in a DICOMDIR but missing"),
    "label-conflict": (ERROR, "patients under two labels (image folders)"),
}


class IngestError(ValueError):
    """Ingest cannot go on (or `strict` met a problem); the message says where."""


class Skip(Exception):
    """A file is not used. `detail` is one actionable line, without the path."""

    def __init__(self, code: str, detail: str):
        if code not in REASONS:
            raise KeyError(f"unknown skip reason code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def is_error(self) -> bool:
        return is_error(self.code)


def is_error(code: str) -> bool:
    """True when the code is something to fix rather than a deliberate exclusion."""
    return REASONS[code][0] == ERROR


def short_error(err: BaseException) -> str:
    """First line of an exception message, short enough for a report line."""
    text = str(err).strip()
    text = text.splitlines()[0] if text else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
