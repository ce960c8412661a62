"""The shortcut check's attributes: source folder for image and DICOM sites,
scanner tags for DICOM; values that say nothing of the label give no warning."""

from __future__ import annotations

import json

import pydicom
from test_ingest_image_labels import image
from test_ingest_support import write_labels, write_series

from common.ingest import IngestConfig, ingest_site
from common.ingest.shortcuts import LABEL_FOLDER, source_folder

CONFIG = IngestConfig(image_size=32)


def _dicom_site(tmp_path, scanner_by_label: bool):
    """8 patients per class, 2 slices each; the scanner follows the label or not."""
    site = tmp_path / "dicom"
    rows = []
    for label in (0, 1):
        for i in range(8):
            pid = f"P{label}{i}"
            rows.append((pid, str(label)))
            vendor = ("GE", "Siemens")[label if scanner_by_label else i % 2]
            for path in write_series(site / "export", pid, 2, seed=i):
                ds = pydicom.dcmread(path)
                ds.Manufacturer = vendor
                ds.ManufacturerModelName = f"{vendor} CT"
                ds.save_as(path)
    return site, write_labels(site, rows)


def test_a_dicom_site_whose_scanner_encodes_the_label_is_warned_about(tmp_path):
    site, labels = _dicom_site(tmp_path, scanner_by_label=True)
    result = ingest_site(site, labels, tmp_path / "c", CONFIG, progress=False)
    shortcuts = json.loads(result.report_path.read_text())["shortcuts"]
    assert shortcuts["auc"]["manufacturer"] == 1.0
    assert shortcuts["auc"]["source"] < 0.8  # one folder for all
    assert result.summary.warnings
    assert "manufacturer alone 1.00" in result.summary.warnings[0]


def test_a_dicom_site_with_mixed_scanners_is_not_warned_about(tmp_path):
    site, labels = _dicom_site(tmp_path, scanner_by_label=False)
    result = ingest_site(site, labels, tmp_path / "c", CONFIG, progress=False)
    shortcuts = json.loads(result.report_path.read_text())["shortcuts"]
    assert shortcuts["auc"]["all"] < 0.8
    assert result.summary.warnings == ()


def test_the_scanner_tags_come_from_the_cached_headers(tmp_path, monkeypatch):
    """Read with the rest of the header once; a second ingest of the unchanged
    site reads no file for them, and still warns."""
    import common.ingest.finish as finish

    site, labels = _dicom_site(tmp_path, scanner_by_label=True)
    ingest_site(site, labels, tmp_path / "c", CONFIG, progress=False)
    state = json.loads((tmp_path / "c" / "state.json").read_text())
    vendors = {r["header"]["manufacturer"] for r in state["records"].values()}
    assert vendors == {"GE", "Siemens"}

    def no_reading(path):
        raise AssertionError(f"{path} read again for its scanner tags")

    monkeypatch.setattr(finish, "dicom_metadata", no_reading)
    again = ingest_site(site, labels, tmp_path / "c", CONFIG, progress=False)
    assert again.files_read == 0
    assert "manufacturer alone 1.00" in again.summary.warnings[0]


def test_a_cache_without_scanner_tags_reads_them_from_the_files(tmp_path):
    """Headers cached before the tags were: the files are read for them."""
    site, labels = _dicom_site(tmp_path, scanner_by_label=True)
    ingest_site(site, labels, tmp_path / "c", CONFIG, progress=False)
    path = tmp_path / "c" / "state.json"
    state = json.loads(path.read_text())
    for record in state["records"].values():
        del record["header"]["manufacturer"], record["header"]["model_name"]
    path.write_text(json.dumps(state))
    again = ingest_site(site, labels, tmp_path / "c", CONFIG, progress=False)
    shortcuts = json.loads(again.report_path.read_text())["shortcuts"]
    assert again.files_read == 0  # the old headers were trusted, not re-parsed
    assert shortcuts["auc"]["manufacturer"] == 1.0


def test_an_image_site_whose_source_folder_encodes_the_label(tmp_path):
    site = tmp_path / "images"
    rows = ["file,label"]
    for label, source in ((1, "papers"), (0, "pacs")):
        for i in range(8):
            for j in range(2):
                rel = f"{source}/p{label}{i}/{j}.png"
                image(site / rel, 100, (48, 48))
                rows.append(f"{rel},{label}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    result = ingest_site(site, labels, tmp_path / "c", CONFIG, progress=False)
    shortcuts = json.loads(result.report_path.read_text())["shortcuts"]
    assert shortcuts["auc"]["source"] == 1.0
    assert shortcuts["auc"]["format"] < 0.8
    assert "source alone 1.00" in result.summary.warnings[0]


def test_a_label_folder_is_no_source():
    words = {"covid": 1, "noncovid": 0}
    assert source_folder("COVID/p1/a.png", words) == LABEL_FOLDER
    assert source_folder("site_b/p1/a.png", words) == "site_b"
    assert source_folder("a.png", words) == "."
