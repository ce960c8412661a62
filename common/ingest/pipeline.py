"""`ingest_site`: a site folder in, cached slices and a report out.

Steps: walk the folder; read (hash, parse, decode) only files whose content is
new; decide per file from its cached header; group into series; decode what the
kept series still miss; apply the slice policy; assemble one array per series;
write the report. Nothing is ever written inside the site folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path

import xxhash
from tqdm import tqdm

from common.ingest.cache import (
    Cache,
    State,
    copy_rows,
    durable_together,
    read_array,
    row_source,
)
from common.ingest.checks import check_usable
from common.ingest.config import IngestConfig
from common.ingest.headers import DICOM_SUFFIXES, Header
from common.ingest.image_labels import (
    ImageLabels,
    holds_images,
    read_image_labels,
    split_mixed_folders,
)
from common.ingest.images import image_plans, is_image_layout
from common.ingest.labels import (
    LabelProblem,
    LabelRow,
    Labels,
    read_labels,
    unmatched,
)
from common.ingest.packs import SeriesBuffer, folder_chunks, whole_packs
from common.ingest.policy import from_unit, lung_fraction, select_slices
from common.ingest.reasons import IngestError, Skip, is_error
from common.ingest.report import (
    REPORT_FILE,
    USED,
    FileOutcome,
    outcome,
    summarize,
    write_report,
)
from common.ingest.result import IngestedPatient, IngestedSeries, IngestResult
from common.ingest.scan import missing_references, walk
from common.ingest.series import Candidate, SeriesPlan, plan_series
from common.ingest.shortcuts import (
    DICOM_ATTRIBUTES,
    dicom_metadata,
    image_metadata,
    shortcut_check,
    source_folder,
)
from common.ingest.worker import FileResult, WorkerSetup, init_worker, process_chunk

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
                kept = self._assemble(plans, dropped, outcomes)
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

    def _assemble(
        self, plans: list[SeriesPlan], dropped: list[SeriesPlan], outcomes: dict
    ) -> list[tuple[SeriesPlan, list[int], Path]] | None:
        """One array per series (kept ones, and complete dropped ones so that a
        policy change needs no decoding); None if a cached array was unreadable."""
        kept, index, opened, copies, series = [], {}, {}, [], []
        for plan, chosen in [(p, True) for p in plans] + [(p, False) for p in dropped]:
            refs = [(ref.key, ref.frame) for ref in plan.slices]
            if not chosen and not all(ref in self.stored for ref in refs):
                continue
            series_key = self._series_key(plan)
            path = self.cache.series_path(self.pixel_key, series_key)
            if series_key not in self.index:
                rows = self._series_rows(plan, opened)
                if rows is None:
                    return None
                copies.append((path, rows))
            series.append((plan, chosen, refs, series_key, path))
        self._write_series(copies)
        for plan, chosen, refs, series_key, path in series:
            if chosen and self.config.slice_policy == "lung":
                self._measure_lungs(plan, path)
            index[series_key] = [
                [*ref, *_json_floats(*self.stored[ref][2:], self.lungs.get(ref))]
                for ref in refs
            ]
            if not chosen:
                continue
            lungs = [self.lungs.get(ref, math.nan) for ref in refs]
            keep, why = select_slices(lungs, self.config)
            used = {plan.slices[i].rel for i in keep}
            for rel in {ref.rel for ref in plan.slices} - used:
                outcomes[rel] = outcome(
                    self.site,
                    rel,
                    "slice-policy",
                    why,
                    plan.patient_id,
                    plan.series_uid,
                )
            if keep:
                kept.append((plan, keep, path))
        self.index = index
        return kept

    def _measure_lungs(self, plan: SeriesPlan, path: Path) -> None:
        """Lung shares the lung policy needs, from the cached slices (no decoding)."""
        todo = [
            (index, (ref.key, ref.frame))
            for index, ref in enumerate(plan.slices)
            if (ref.key, ref.frame) not in self.lungs
        ]
        if not todo:
            return
        array = read_array(path)
        for index, ref in todo:
            low, high = self.stored[ref][2:]
            self.lungs[ref] = (
                math.nan  # image folders: no HU
                if math.isnan(low)
                else lung_fraction(from_unit(array[index], low, high))
            )

    def _series_rows(
        self, plan: SeriesPlan, opened: dict
    ) -> list[tuple[str, int, int]] | None:
        """Where a series' frames are (packs or older arrays); None, after
        forgetting it, if one of those files is unreadable."""
        rows = []
        for ref in plan.slices:
            source, row, _, _ = self.stored[(ref.key, ref.frame)]
            try:
                if source not in opened:
                    opened[source] = row_source(source, self.config.image_size)
                base, count = opened[source]
                if not 0 <= row < count:
                    raise IndexError(f"row {row} of {count}")
                rows.append((source, base, row))
            except (OSError, ValueError, IndexError) as err:
                log.warning(
                    "%s: cached array unreadable (%s); decoding again", source, err
                )
                self.stored = {k: v for k, v in self.stored.items() if v[0] != source}
                self.index.pop(Path(source).stem, None)
                Path(source).unlink(missing_ok=True)
                return None
        return rows

    def _write_series(self, copies: list[tuple[Path, list]]) -> None:
        """Write series arrays from their rows: a pack that holds exactly one
        series' rows in order is renamed into place (see `SeriesBuffer`); the
        others are copied. The kernel copies the bytes (GIL released), so with
        several workers as many threads copy at once."""
        size = self.config.image_size
        renames, copies = whole_packs(
            copies, self.cache.packs_dir(self.pixel_key), size
        )
        threads = min(self.config.workers, len(copies))
        if threads <= 1:
            for path, rows in copies:
                copy_rows(path, rows, size)
        else:
            with ThreadPoolExecutor(threads) as pool:
                jobs = [
                    pool.submit(copy_rows, path, rows, size) for path, rows in copies
                ]
                for job in jobs:
                    job.result()
        self._rename_packs(renames)

    def _rename_packs(self, renames: list[tuple[str, Path]]) -> None:
        """Packs become series arrays; what pointed at a pack points at its array
        (renamed after the copies: none of them reads a renamed pack)."""
        if not renames:
            return
        moved = {}
        for source, path in renames:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, path)
            moved[source] = str(path)
        for ref, (source, row, low, high) in self.stored.items():
            if source in moved:
                self.stored[ref] = (moved[source], row, low, high)

    def _series_key(self, plan: SeriesPlan) -> str:
        members = "\n".join(f"{ref.key}:{ref.frame}" for ref in plan.slices)
        return xxhash.xxh3_128_hexdigest(f"{self.pixel_key}\n{members}".encode())

    def _finish(self, files, outcomes, kept, with_files) -> IngestResult:
        """The result for training, the report for people, the cache saved."""
        # The three files' fsyncs run at once; the state's (the largest) starts
        # first and waits for the disk while the report is built.
        with durable_together():
            self._save(files)
            patients, summary, report_path, all_outcomes, problems = self._report(
                outcomes, kept, with_files
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

    def _report(self, outcomes, kept, with_files) -> tuple:
        """Write the report; (patients, summary, its path, outcomes, problems)."""
        by_patient: dict[str, list[IngestedSeries]] = {}
        for plan, keep, path in kept:
            series = IngestedSeries(
                uid=plan.series_uid,
                study_uid=plan.study_uid,
                name=plan.name,
                array=path,
                sources=tuple(_sources(plan)),
                positions=tuple(ref.position for ref in plan.slices),
                lung=tuple(
                    self.lungs.get((ref.key, ref.frame), math.nan)
                    for ref in plan.slices
                ),
                keep=tuple(keep),
                ranges=tuple(
                    tuple(self.stored.get((ref.key, ref.frame), _NO_RANGE)[2:])
                    for ref in plan.slices
                ),
            )
            by_patient.setdefault(plan.patient_id, []).append(series)
            used = {}
            for index in keep:
                ref = plan.slices[index]
                used[ref.rel] = used.get(ref.rel, 0) + 1
            for rel, count in used.items():
                outcomes[rel] = FileOutcome(
                    rel,
                    USED,
                    patient_id=plan.patient_id,
                    series_uid=plan.series_uid,
                    slices=count,
                )
        patients = tuple(
            IngestedPatient(pid, self.labels.rows[pid].label, tuple(series))
            for pid, series in sorted(by_patient.items())
        )
        problems = list(self.labels.problems)
        if self.images:
            problems += self.image_labels.unmatched()
        else:
            problems += unmatched(self.labels, with_files, set(by_patient))
        unlabeled = sorted(
            {
                o.patient_id
                for o in outcomes.values()
                if o.code == "no-label" and o.patient_id
            }
        )
        without_images = sorted(
            pid for pid in self.labels.rows if pid not in by_patient
        )
        patient_rows = [
            {
                "patient_id": p.patient_id,
                "label": p.label,
                "series": [
                    {
                        "uid": s.uid,
                        "name": s.name,
                        "slices": len(s.sources),
                        "kept": len(s.keep),
                    }
                    for s in p.series
                ],
            }
            for p in patients
        ]
        all_outcomes = list(outcomes.values())
        summary = summarize(
            self.site, all_outcomes, patient_rows, problems, without_images, unlabeled
        )
        shortcuts = self._shortcuts(kept)
        if shortcuts and shortcuts["warning"]:
            summary = dataclasses.replace(summary, warnings=(shortcuts["warning"],))
        report_path = self.cache.root / REPORT_FILE
        context = {
            "site_dir": str(self.site),
            "labels": str(self.labels_path) if self.labels_path else None,
            "cache_dir": str(self.cache.root),
            "config": self.config.to_dict(),
            "files_read": self.files_read,
            "files_decoded": self.files_decoded,
            "shortcuts": shortcuts,
        }
        write_report(
            report_path, summary, context, all_outcomes, patient_rows, problems
        )
        return patients, summary, report_path, all_outcomes, problems

    def _shortcuts(self, kept) -> dict | None:
        """The shortcut check on the used slices (`shortcuts`): image headers,
        or a DICOM series' scanner tags (read once per series)."""
        rows, labels, patients = [], [], []
        words = self.image_labels.words if self.images else None
        for plan, keep, _ in kept:
            series = {} if self.images or not keep else None
            for index in keep:
                rel = plan.slices[index].rel
                if series is None:
                    series = dicom_metadata(self.site / rel)
                row = image_metadata(self.site / rel) if self.images else dict(series)
                rows.append({**row, "source": source_folder(rel, words)})
                labels.append(self.labels.rows[plan.patient_id].label)
                patients.append(plan.patient_id)
        if self.images:
            return shortcut_check(rows, labels, patients)
        return shortcut_check(rows, labels, patients, DICOM_ATTRIBUTES)

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
        """Run file jobs in this process or in worker processes, with a progress bar."""
        if not jobs:
            return
        setup = self._setup()
        bar = tqdm(
            total=len(jobs),
            desc=f"{self.site.name}: {what}",
            unit="file",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            workers = min(self.config.workers, len(jobs))
            chunks = folder_chunks(jobs, workers)
            if workers <= 1:
                sink = SeriesBuffer(setup.packs_dir, self.config.image_size)
                try:
                    for chunk in chunks:
                        results = process_chunk(chunk, setup, sink)
                        yield from results
                        bar.update(len(results))
                finally:
                    sink.close()
                return
            pool = ProcessPoolExecutor(
                workers,
                mp_context=_context(),
                initializer=init_worker,
                initargs=(setup,),
            )
            try:
                yield from self._pool_results(pool, chunks, setup, bar)
            finally:
                # Every result is in and every pack flushed: the workers exit
                # while the run goes on (waiting for them is 10-20 ms of
                # serial time).
                pool.shutdown(wait=False, cancel_futures=True)
        finally:
            bar.close()

    def _pool_results(
        self, pool: ProcessPoolExecutor, chunks: list, setup: WorkerSetup, bar
    ) -> Iterator[FileResult]:
        """Results of `chunks` run by the pool's workers.

        Starting workers takes time (tens of ms for each new pool, a second or
        more for a process's first, which starts the forkserver), and most of it
        is spent inside `submit`. So a thread submits the chunks from the front
        of the queue while this process takes chunks from its back, until a
        worker delivers its first results; then the cores are the workers'.
        """
        queue = deque(chunks)
        lock = threading.Lock()
        futures: list = []
        failed: list[BaseException] = []

        def submit_all() -> None:
            try:
                while True:
                    with lock:
                        if not queue:
                            return
                        chunk = queue.popleft()
                    futures.append(pool.submit(process_chunk, chunk))
            except BaseException as err:  # re-raised below, in this thread
                failed.append(err)

        submitter = threading.Thread(target=submit_all, daemon=True)
        submitter.start()
        sink = SeriesBuffer(setup.packs_dir, self.config.image_size)
        try:
            while not any(future.done() for future in list(futures)):
                with lock:
                    if len(queue) <= self.config.workers:
                        break  # the last chunks are the workers'
                    chunk = queue.pop()
                results = process_chunk(chunk, setup, sink)
                yield from results
                bar.update(len(results))
        finally:
            sink.close()
            with lock:
                if sys.exc_info()[0] is not None:
                    queue.clear()  # stop submitting
            submitter.join()
        if failed:
            raise failed[0]
        for future in as_completed(futures):
            results = future.result()
            yield from results
            bar.update(len(results))


def _path_skip(rel: str, code: str, detail: str) -> Skip:
    """A cached skip, as it reads for this path (records are per content)."""
    if code in ("not-dicom", "bad-dicom"):
        code = "bad-dicom" if rel.lower().endswith(DICOM_SUFFIXES) else "not-dicom"
    return Skip(code, detail)


_NO_RANGE = ("", 0, math.nan, math.nan)  # a stored row without its HU range


def _nan(value) -> float:
    """JSON has no NaN: image folders' HU ranges are stored as null."""
    return math.nan if value is None else float(value)


def _json_floats(*values: float | None) -> list[float | None]:
    return [None if v is None or math.isnan(v) else v for v in values]


def _sources(plan: SeriesPlan) -> Iterator[str]:
    """Each slice's file; `path#frame` when a file holds several frames."""
    per_file: dict[str, int] = {}
    for ref in plan.slices:
        per_file[ref.rel] = per_file.get(ref.rel, 0) + 1
    for ref in plan.slices:
        yield ref.rel if per_file[ref.rel] == 1 else f"{ref.rel}#{ref.frame}"


def _context():
    """forkserver: safe when the parent has threads (TensorFlow, Flower), and
    cheaper than spawn because the server imports the worker module once, and
    the parent's main module once: each new worker would import it again (a
    forkserver or spawn child does, unless its server already has), which
    cost 50-500 ms per pool under the benchmark's script."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", "common.ingest.worker"])
        return ctx
    return multiprocessing.get_context("spawn")
