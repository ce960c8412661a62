"""labels.csv problems by line number; unmatched patients and images listed."""

from __future__ import annotations

import json

import pytest
from pydicom.uid import MRImageStorage
from test_ingest_support import ct_dataset, save, write_series

from common.ingest import IngestConfig, IngestError, ingest_site
from common.ingest.labels import read_labels

CONFIG = IngestConfig(image_size=32)


def _write(path, text: str):
    path.write_text(text)
    return path


def test_rows_with_problems_are_reported_by_line(tmp_path):
    labels = _write(
        tmp_path / "labels.csv",
        "patient_id,label\nA,1\nB,covid\n,0\nA,1\nC,0\nC,1\n\nD,0\n",
    )
    parsed = read_labels(labels)
    assert sorted(parsed.rows) == ["A", "D"]
    by_line = {p.line: p for p in parsed.problems}
    assert by_line[3].code == "bad-label" and f"{labels}:3:" in by_line[3].message
    assert by_line[4].code == "empty-id"
    assert by_line[5].code == "duplicate-id" and "line 2" in by_line[5].message
    assert by_line[7].code == "duplicate-id" and "not used" in by_line[7].message


def test_semicolons_and_a_byte_order_mark_are_fine(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes("\ufeffPatient_ID;Label\nA;1\n".encode())
    assert read_labels(labels).rows["A"].label == 1


@pytest.mark.parametrize("text", ["id,diagnosis\nA,1\n", ""])
def test_a_header_without_the_columns_stops_ingest(tmp_path, text):
    with pytest.raises(IngestError, match=":1: the header"):
        read_labels(_write(tmp_path / "labels.csv", text))


def test_a_missing_labels_file_stops_ingest(tmp_path):
    (tmp_path / "site").mkdir()
    with pytest.raises(IngestError, match="labels file not found"):
        ingest_site(tmp_path / "site", cache_dir=tmp_path / "c", config=CONFIG)


def test_patients_and_images_that_do_not_match(tmp_path):
    site = tmp_path / "site"
    write_series(site, "A", 2)  # labelled, fine
    write_series(site, "X", 2)  # images, no label
    save(
        ct_dataset(patient_id="M", modality="MR", sop_class=MRImageStorage),
        site / "M" / "mr.dcm",
    )  # labelled, but no usable CT slice
    _write(site / "labels.csv", "patient_id,label\nA,1\nGHOST,0\nM,1\nBAD,2\n")
    result = ingest_site(site, cache_dir=tmp_path / "c", config=CONFIG)
    assert [p.patient_id for p in result.patients] == ["A"]
    report = json.loads(result.report_path.read_text())
    problems = {p["line"]: p for p in report["label_problems"]}
    assert problems[3]["code"] == "unknown-patient"
    assert "'GHOST' has no file" in problems[3]["message"]
    assert problems[4]["code"] == "no-usable-slice"
    assert problems[5]["code"] == "bad-label"
    assert report["labelled_without_images"] == ["GHOST", "M"]
    assert report["images_without_label"] == ["X"]
    skipped = [f for f in report["files"] if f["patient_id"] == "X"]
    assert {f["code"] for f in skipped} == {"no-label"}
    assert "add a row 'X,0' or 'X,1'" in skipped[0]["reason"]
    with pytest.raises(IngestError, match="labels.csv:5: label '2'"):
        ingest_site(site, cache_dir=tmp_path / "c", config=CONFIG, strict=True)


def test_labels_outside_the_site_folder(tmp_path):
    site = tmp_path / "site"
    write_series(site, "A", 2)
    labels = _write(tmp_path / "elsewhere.csv", "patient_id,label\nA,0\n")
    result = ingest_site(site, labels, tmp_path / "c", CONFIG)
    assert result.patients[0].label == 0
