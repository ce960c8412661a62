"""`ingest_site`: a site folder in, cached slices and a report out.

Steps: walk the folder; read (hash, parse, decode) only files whose content is
new; decide per file from its cached header; group into series; decode what the
kept series still miss; apply the slice policy; assemble one array per series;
write the report. Nothing is ever written inside the site folder.
The run's steps are here; the file jobs run in `jobs.py`, the series arrays are
stored by `assemble.py`, and the result and report are made by `finish.py`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import xxhash

from common.ingest.assemble import assemble
from common.ingest.cache import (
    Cache,
    State,
    durable_together,
)
from common.ingest.checks import check_usable
from common.ingest.config import IngestConfig
from common.ingest.finish import report_run
from common.ingest.headers import DICOM_SUFFIXES, Header
from common.ingest.image_labels import (
    ImageLabels,
    holds_images,
    read_image_labels,
    split_mixed_folders,
)
from common.ingest.images import image_plans, is_image_layout
from common.ingest.jobs import run_jobs
from common.ingest.labels import (
    LabelProblem,
    LabelRow,
    Labels,
    read_labels,
)
from common.ingest.reasons import IngestError, Skip, is_error
from common.ingest.report import (
    FileOutcome,
    outcome,
)
from common.ingest.result import IngestResult
from common.ingest.scan import missing_references, walk
from common.ingest.series import Candidate, SeriesPlan, plan_series
from common.ingest.worker import FileResult, WorkerSetup

LABELS_FILE = "labels.csv"
log = logging.getLogger(__name__)


def default_cache_dir(site_dir: Path) -> Path:
    """A per-site cache under the user's cache folder (never the site folder)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = xxhash.xxh3_64_hexdigest(str(Path(site_dir).resolve()).encode())[:8]
    return base / "fedbigbigan" / f"{Path(site_dir).name}-{digest}"


def ingest_site(
    site_dir: Path | str,
    labels_csv: Path | str | None = None,
    cache_dir: Path | str | None = None,
    config: IngestConfig | None = None,
    *,
    strict: bool = False,
    progress: bool = True,
    rehash: bool = False,
    label_map: dict[str, int] | None = None,
) -> IngestResult:
    """Ingest a site folder (DICOM + labels.csv, or PNG/JPEG slices).

    `labels_csv` defaults to `site_dir/labels.csv`. A folder of image files (or
    with label folders on top) is an image collection: labelled by the CSV if
    there is one (per file, glob or patient; `label_map` words allowed, see
    `image_labels`), else by its folders' names. `strict` raises `IngestError`
    with the first problem (after writing the report); otherwise problems are
    reported and everything usable is kept.
    """
    site = Path(site_dir).resolve()
    if not site.is_dir():
        raise IngestError(f"{site}: site folder not found")
    config = config or IngestConfig()
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir(site), site)
    labels_path = Path(labels_csv).resolve() if labels_csv else site / LABELS_FILE
    images = is_image_layout(site) or holds_images(site)
    if images and labels_csv is None and not labels_path.is_file():
        labels_path = None  # labels from the folders' names
    image_labels = read_image_labels(labels_path, label_map) if images else None
    with cache.locked():
        run = _Run(site, cache, config, labels_path, strict, progress, image_labels)
        return run.execute(rehash)


class _Run:
    """One ingest of one site; holds what the steps share."""

    def __init__(
        self,
        site: Path,
        cache: Cache,
        config: IngestConfig,
        labels_path: Path | None,
        strict: bool,
        progress: bool,
        image_labels: ImageLabels | None = None,
    ):
        self.site, self.cache, self.config = site, cache, config
        # Image collections: each file's label and patient (None: DICOM).
        self.image_labels = image_labels
        self.images = image_labels is not None
        self.labels_path, self.strict, self.progress = labels_path, strict, progress
        self.pixel_key = config.pixel_key()
        self.state = State()
        # Series arrays of this config, and where each decoded frame is now:
        # (content key, frame) -> (series array or pack, row, HU at -1, HU at 1).
        self.index: dict[str, list[list]] = {}
        self.stored: dict[tuple[str, int], tuple[str, int, float, float]] = {}
        self.lungs: dict[tuple[str, int], float] = {}  # measured lung shares
        self.headers: dict[str, Header] = {}  # read by this run, by content key
        # Work per file done as results arrive, while the workers still run,
        # so that the run's serial end does less: each record's JSON (for
        # state.json) and `check_usable`'s verdict (None: usable), by key.
        self.encoded: dict[str, str] = {}
        self.usable: dict[str, tuple[str, str] | None] = {}
        self.labels = Labels(Path("labels.csv"))
        self.files_read = 0
        self.files_decoded = 0

    # ---- the steps ------------------------------------------------------------

    def execute(self, rehash: bool) -> IngestResult:
        if self.images:
            self.labels = Labels(self.labels_path or self.site)
            self.labels.problems = list(self.image_labels.problems)
        elif self.labels_path is not None:
            self.labels = read_labels(self.labels_path)
        if self.strict and self.labels.problems:
            raise IngestError(self.labels.problems[0].message)
        self.state = self.cache.load_state()
        self.index = self.cache.load_index(self.pixel_key)
        self.cache.prune(self.pixel_key, set(self.index))  # a dead run's leftovers
        for series_key, rows in self.index.items():
            path = str(self.cache.series_path(self.pixel_key, series_key))
            for row, (key, frame, low, high, lung) in enumerate(rows):
                self.stored[(key, frame)] = (path, row, _nan(low), _nan(high))
                if lung is not None:
                    self.lungs[(key, frame)] = lung
        files, walk_errors = walk(
            self.site, {self.labels_path} if self.labels_path else set()
        )
        self._read_new(files, rehash)
        for _ in range(4):  # each round decodes what kept series miss, or drops it
            outcomes, plans, dropped, with_files = self._decide(files, walk_errors)
            missing = self._missing(plans)
            if not missing:
                kept = assemble(self, plans, dropped, outcomes)
                if kept is not None:
                    break
            else:
                self._decode(missing)
        else:  # pragma: no cover - each round makes progress; this is a guard
            raise IngestError(f"{self.site}: ingest did not settle; run it again")
        return self._finish(files, outcomes, kept, with_files)

    def _read_new(self, files: dict[str, list[int] | None], rehash: bool) -> None:
        """Hash, parse and decode files that are new or changed since last run."""
        todo = []
        for rel, stat in files.items():
            known = self.state.files.get(rel)
            if (
                rehash
                or stat is None
                or known is None
                or known[:4] != stat
                or known[4] not in self.state.records
            ):
                todo.append((rel, True))
        for result in self._run_jobs(todo, "reading"):
            self._remember(result)
        self.state.files = {
            rel: v for rel, v in self.state.files.items() if rel in files
        }

    def _decide(self, files: dict, walk_errors: dict):
        """Every file's fate from cached headers; kept and dropped series."""
        outcomes: dict[str, FileOutcome] = {
            rel: outcome(self.site, rel, s.code, s.detail)
            for rel, s in walk_errors.items()
        }
        candidates: list[Candidate] = []
        image_files: list[tuple[str, str, dict]] = []
        with_files: set[str] = set()
        present: set[str] = set()  # lower-case paths, once a DICOMDIR needs them
        for rel in files:
            key = self.state.files[rel][4]
            record = self.state.records[key]
            header = self.headers.get(key)
            if header is None and record["header"]:
                header = Header.from_json(record["header"])
            info = None
            try:
                if self.images:
                    info = self.image_labels.info(rel)  # from the path or the CSV
                pid = info["patient_id"] if info else header and header.patient_id
                if pid:
                    with_files.add(pid)
                if header is not None and header.is_dicomdir:
                    present = present or {r.lower() for r in files}
                    self._check_dicomdir(rel, header, present, outcomes)
                if record["skip"]:
                    raise _path_skip(rel, *record["skip"])
                if info is not None:
                    image_files.append((rel, key, info))
                    continue
                self._check_usable(key, header)
                self._check_label(header.patient_id)
                candidates.append(Candidate(rel, key, header))
            except Skip as skip:
                pid = info["patient_id"] if info else header and header.patient_id
                outcomes[rel] = outcome(
                    self.site, rel, skip.code, skip.detail, pid or None
                )
        dropped: list[SeriesPlan] = []
        if self.images:
            plans = self._image_plans(image_files, outcomes)
        else:
            plans, dropped, skips = plan_series(candidates, self.config)
            owner = {c.rel: c.header.patient_id for c in candidates}
            for rel, skip in skips.items():
                outcomes[rel] = outcome(
                    self.site, rel, skip.code, skip.detail, owner[rel]
                )
        return outcomes, plans, dropped, with_files

    def _check_dicomdir(self, rel, header, present, outcomes) -> None:
        for ref in missing_references(rel, header.referenced_files, present):
            outcomes[ref] = outcome(
                self.site,
                ref,
                "dicomdir-missing",
                f"listed in DICOMDIR {rel} but missing from the export; "
                "copy the complete export",
            )

    def _check_label(self, patient_id: str) -> None:
        if patient_id in self.labels.rows:
            return
        flagged = [p for p in self.labels.problems if p.patient_id == patient_id]
        if flagged:
            raise Skip(
                "no-label",
                f"patient {patient_id!r} has no usable row in {self.labels.path.name} "
                f"(line {flagged[0].line}: see label_problems)",
            )
        raise Skip(
            "no-label",
            f"patient {patient_id!r} is not in {self.labels.path.name}; add a row "
            f"'{patient_id},0' or '{patient_id},1' to use it",
        )

    def _image_plans(self, image_files, outcomes) -> list[SeriesPlan]:
        """Image collections: one series per patient; a patient under both
        labels is dropped, but a folder taken for a patient that holds both
        labels (`images/*.png` labelled by a CSV) is no patient: its images
        are each their own."""
        image_files = split_mixed_folders(image_files)
        folders: dict[str, set[int]] = {}
        for _, _, info in image_files:
            folders.setdefault(info["patient_id"], set()).add(info["label"])
        usable = []
        for rel, key, info in image_files:
            if len(folders[info["patient_id"]]) > 1:
                outcomes[rel] = outcome(
                    self.site,
                    rel,
                    "label-conflict",
                    f"patient {info['patient_id']!r} has images under both labels; "
                    "give all of its images one label",
                    info["patient_id"],
                )
            else:
                usable.append((rel, key, info))
        self.labels.rows = {}
        for _, _, info in usable:
            pid = info["patient_id"]
            self.labels.rows.setdefault(pid, LabelRow(pid, info["label"], 0))
        return image_plans(usable)

    def _missing(self, plans: list[SeriesPlan]) -> dict[str, str]:
        """Files the kept series need whose frames this config has not cached."""
        missing: dict[str, str] = {}
        for plan in plans:
            for ref in plan.slices:
                if (ref.key, ref.frame) not in self.stored:
                    missing.setdefault(ref.key, ref.rel)
        return missing

    def _decode(self, missing: dict[str, str]) -> None:
        """Decode files for a new config (or whose cached arrays vanished)."""
        jobs = [(rel, True) for rel in missing.values()]
        for result in list(self._run_jobs(jobs, "decoding")):
            self._remember(result)
            if (
                result.key in missing
                and not result.decoded
                and not result.record["skip"]
            ):
                # Nothing decoded and no reason given: never loop on it.
                result.record["skip"] = ["decode", "pixel data could not be cached"]
                self.encoded.pop(result.key, None)  # its JSON changed

    def _finish(self, files, outcomes, kept, with_files) -> IngestResult:
        """The result for training, the report for people, the cache saved."""
        # The three files' fsyncs run at once; the state's (the largest) starts
        # first and waits for the disk while the report is built.
        with durable_together():
            self._save(files)
            patients, summary, report_path, all_outcomes, problems = report_run(
                self, outcomes, kept, with_files
            )
        self.cache.prune(self.pixel_key, set(self.index))
        log.info("%s", summary.text(report_path))
        if self.strict:
            self._raise_first_problem(all_outcomes, problems)
        return IngestResult(
            self.site,
            self.cache.root,
            self.config,
            patients,
            summary,
            report_path,
            self.files_read,
            self.files_decoded,
        )

    def _raise_first_problem(
        self, outcomes: list[FileOutcome], problems: list[LabelProblem]
    ) -> None:
        errors = sorted(
            (o for o in outcomes if o.code and is_error(o.code)), key=lambda o: o.path
        )
        if errors:
            raise IngestError(errors[0].reason)
        if problems:
            raise IngestError(sorted(problems, key=lambda p: p.line)[0].message)

    def _save(self, files) -> None:
        """Forget what no current file uses; save what is still valid (arrays
        that no series uses are deleted after)."""
        keys = {self.state.files[rel][4] for rel in files}
        self.state.records = {k: v for k, v in self.state.records.items() if k in keys}
        self.cache.save_index(self.pixel_key, self.index)
        self.cache.save_state(self.state, self.encoded)

    # ---- helpers -------------------------------------------------------------

    def _check_usable(self, key: str, header: Header) -> None:
        """`check_usable`, its verdict kept per content key (the config is the
        run's, so it cannot change)."""
        if key not in self.usable:
            try:
                check_usable(header, self.config)
                self.usable[key] = None
            except Skip as skip:
                self.usable[key] = (skip.code, skip.detail)
        verdict = self.usable[key]
        if verdict is not None:
            raise Skip(*verdict)

    def _remember(self, result: FileResult) -> None:
        record = result.remembered()
        self.state.files[result.rel] = [*result.stat, result.key]
        self.state.records[result.key] = record
        # While workers run, this process mostly waits: do now what the end
        # would do for this file.
        self.encoded[result.key] = json.dumps(record)
        if result.header is not None:
            self.headers[result.key] = result.header
            if not self.images and not record["skip"]:
                with contextlib.suppress(Skip):
                    self._check_usable(result.key, result.header)
        self.files_read += 1
        if result.decoded:
            for frame, (low, high) in enumerate(result.ranges or []):
                self.stored[(result.key, frame)] = (
                    result.pack,
                    result.row + frame,
                    low,
                    high,
                )
                self.lungs.pop((result.key, frame), None)
            self.files_decoded += 1

    def _setup(self) -> WorkerSetup:
        labelled = None if self.images else frozenset(self.labels.rows)
        return WorkerSetup(
            site_dir=str(self.site),
            packs_dir=str(self.cache.packs_dir(self.pixel_key)),
            config=self.config,
            labelled=labelled,
            have=frozenset(key for key, _ in self.stored),
            kind="images" if self.images else "dicom",
        )

    def _run_jobs(
        self, jobs: list[tuple[str, bool]], what: str
    ) -> Iterator[FileResult]:
        """Run file jobs in this process or in worker processes (`jobs.py`)."""
        if not jobs:
            return
        yield from run_jobs(
            jobs, self._setup(), self.config, f"{self.site.name}: {what}", self.progress
        )


def _path_skip(rel: str, code: str, detail: str) -> Skip:
    """A cached skip, as it reads for this path (records are per content)."""
    if code in ("not-dicom", "bad-dicom"):
        code = "bad-dicom" if rel.lower().endswith(DICOM_SUFFIXES) else "not-dicom"
    return Skip(code, detail)


def _nan(value) -> float:
    """JSON has no NaN: image folders' HU ranges are stored as null."""
    return math.nan if value is None else float(value)
