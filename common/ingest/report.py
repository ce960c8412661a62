"""`ingest_report.json` (every file, kept or skipped, and why) and the summary."""

from __future__ import annotations

import datetime
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.ingest.cache import write_text
from common.ingest.labels import LabelProblem
from common.ingest.reasons import REASONS, is_error

REPORT_FILE = "ingest_report.json"
USED, EXCLUDED, ERROR = "used", "excluded", "error"


@dataclass(frozen=True)
class FileOutcome:
    """One file (or one missing DICOMDIR entry) and what ingest did with it."""

    path: str  # relative to the site folder
    status: str  # used, excluded or error
    code: str | None = None
    reason: str | None = None  # "<full path>: <what to do>", one line
    patient_id: str | None = None
    series_uid: str | None = None
    slices: int = 0  # slices used from this file


def outcome(
    site_dir: Path,
    rel: str,
    code: str,
    detail: str,
    patient_id: str | None = None,
    series_uid: str | None = None,
) -> FileOutcome:
    """A skipped file; its reason names the full path so IT can find it."""
    return FileOutcome(
        rel,
        ERROR if is_error(code) else EXCLUDED,
        code,
        f"{site_dir / rel}: {detail}",
        patient_id,
        series_uid,
    )


@dataclass(frozen=True)
class Summary:
    site: str
    files: int
    files_used: int
    patients: int
    series: int
    slices: int
    skipped: dict[str, int]  # reason code -> files
    label_problems: int
    labelled_without_images: tuple[str, ...]
    images_without_label: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # e.g. the shortcut check's

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.skipped.items() if is_error(code))

    def text(self, report_path: Path | None = None) -> str:
        """A few lines for a person: what was kept, what was skipped and why."""
        lines = [
            f"{self.site}: {self.patients} patients, {self.series} series, "
            f"{self.slices} slices kept ({self.files_used} of {self.files} files used)"
        ]
        if self.skipped:
            lines.append("skipped files by reason:")
            for code, count in sorted(
                self.skipped.items(), key=lambda i: (-i[1], i[0])
            ):
                kind = "error" if is_error(code) else "excluded"
                lines.append(f"  {count:6d}  {REASONS[code][1]} [{code}, {kind}]")
        if self.label_problems:
            lines.append(
                f"labels problems: {self.label_problems} (by line in the report)"
            )
        for title, ids in (
            ("labelled patients without usable images", self.labelled_without_images),
            ("patients with images but no label", self.images_without_label),
        ):
            if ids:
                shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
                lines.append(f"{title}: {len(ids)} ({shown})")
        lines += [f"warning: {w}" for w in self.warnings]
        if report_path is not None:
            lines.append(f"details: {report_path}")
        return "\n".join(lines)

    def why_nothing_kept(self) -> str:
        """One line: why no patient was kept (for an ingest that kept none)."""
        if not self.files:
            return f"{self.site}: no patient kept: the folder holds no file"
        if self.images_without_label and not self.labelled_without_images:
            return (
                f"{self.site}: no patient kept: no patient with images is in the "
                f"labels ({len(self.images_without_label)} unlabelled)"
            )
        top = sorted(self.skipped.items(), key=lambda i: (-i[1], i[0]))[:3]
        reasons = ", ".join(f"{n} {REASONS[code][1]} [{code}]" for code, n in top)
        return (
            f"{self.site}: no patient kept: {self.files_used} of {self.files} files "
            f"used" + (f"; skipped: {reasons}" if reasons else "")
        )


def summarize(
    site_dir: Path,
    outcomes: list[FileOutcome],
    patients: list[dict[str, Any]],
    problems: list[LabelProblem],
    labelled_without_images: list[str],
    images_without_label: list[str],
) -> Summary:
    files = [o for o in outcomes if o.code != "dicomdir-missing"]
    return Summary(
        site=str(site_dir),
        files=len(files),
        files_used=sum(o.status == USED for o in files),
        patients=len(patients),
        series=sum(len(p["series"]) for p in patients),
        slices=sum(s["kept"] for p in patients for s in p["series"]),
        skipped=dict(Counter(o.code for o in outcomes if o.code)),
        label_problems=len(problems),
        labelled_without_images=tuple(labelled_without_images),
        images_without_label=tuple(images_without_label),
    )


def write_report(
    path: Path,
    summary: Summary,
    context: dict[str, Any],
    outcomes: list[FileOutcome],
    patients: list[dict[str, Any]],
    problems: list[LabelProblem],
) -> None:
    """Write the report atomically (a reader never sees half of it)."""
    head = {
        **context,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "summary": asdict(summary),
        "label_problems": [asdict(p) for p in sorted(problems, key=lambda p: p.line)],
        "labelled_without_images": list(summary.labelled_without_images),
        "images_without_label": list(summary.images_without_label),
        "patients": patients,
    }
    # One line per file: readable, and json's fast encoder (indent makes it use
    # the slow one). vars(), not asdict(): asdict deep-copies every outcome.
    files = ",\n".join(
        "  " + json.dumps(vars(o)) for o in sorted(outcomes, key=lambda o: o.path)
    )
    text = json.dumps(head, indent=1)[:-2] + f',\n "files": [\n{files}\n ]\n}}\n'
    write_text(path, text)
