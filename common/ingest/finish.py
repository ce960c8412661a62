"""The end of an ingest: the kept series as the result for training
(`IngestedPatient`) and the report for people (`ingest_report.json`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from common.ingest.labels import unmatched
from common.ingest.report import REPORT_FILE, USED, FileOutcome, summarize, write_report
from common.ingest.result import IngestedPatient, IngestedSeries
from common.ingest.series import SeriesPlan
from common.ingest.shortcuts import image_metadata, shortcut_check

if TYPE_CHECKING:
    from common.ingest.pipeline import _Run

NO_RANGE = ("", 0, math.nan, math.nan)  # a stored row without its HU range


def report_run(run: _Run, outcomes, kept, with_files) -> tuple:
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
                run.lungs.get((ref.key, ref.frame), math.nan) for ref in plan.slices
            ),
            keep=tuple(keep),
            ranges=tuple(
                tuple(run.stored.get((ref.key, ref.frame), NO_RANGE)[2:])
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
        IngestedPatient(pid, run.labels.rows[pid].label, tuple(series))
        for pid, series in sorted(by_patient.items())
    )
    problems = list(run.labels.problems)
    if run.images:
        problems += run.image_labels.unmatched()
    else:
        problems += unmatched(run.labels, with_files, set(by_patient))
    unlabeled = sorted(
        {
            o.patient_id
            for o in outcomes.values()
            if o.code == "no-label" and o.patient_id
        }
    )
    without_images = sorted(pid for pid in run.labels.rows if pid not in by_patient)
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
        run.site, all_outcomes, patient_rows, problems, without_images, unlabeled
    )
    shortcuts = _shortcuts(run, kept) if run.images else None
    if shortcuts and shortcuts["warning"]:
        summary = dataclasses.replace(summary, warnings=(shortcuts["warning"],))
    report_path = run.cache.root / REPORT_FILE
    context = {
        "site_dir": str(run.site),
        "labels": str(run.labels_path) if run.labels_path else None,
        "cache_dir": str(run.cache.root),
        "config": run.config.to_dict(),
        "files_read": run.files_read,
        "files_decoded": run.files_decoded,
        "shortcuts": shortcuts,
    }
    write_report(report_path, summary, context, all_outcomes, patient_rows, problems)
    return patients, summary, report_path, all_outcomes, problems


def _shortcuts(run: _Run, kept) -> dict | None:
    """The shortcut check on the used images (`shortcuts`)."""
    rows, labels, patients = [], [], []
    for plan, keep, _ in kept:
        for index in keep:
            rows.append(image_metadata(run.site / plan.slices[index].rel))
            labels.append(run.labels.rows[plan.patient_id].label)
            patients.append(plan.patient_id)
    return shortcut_check(rows, labels, patients)


def _sources(plan: SeriesPlan) -> Iterator[str]:
    """Each slice's file; `path#frame` when a file holds several frames."""
    per_file: dict[str, int] = {}
    for ref in plan.slices:
        per_file[ref.rel] = per_file.get(ref.rel, 0) + 1
    for ref in plan.slices:
        yield ref.rel if per_file[ref.rel] == 1 else f"{ref.rel}#{ref.frame}"
