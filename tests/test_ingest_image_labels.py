"""Image collections in any layout: labels from a CSV (file, glob, patient) or
from label words in folder names; refusals name the file, folder or line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from common.commands import main
from common.ingest import IngestConfig, IngestError, ingest_site
from common.ingest.image_labels import label_words, parse_label_map

CONFIG = IngestConfig(image_size=32)


def image(path, value: int = 120, size=(40, 40), mode: str = "L") -> None:
    """A small real image file (format from the suffix) with some structure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size[1], size[0]), np.uint8)
    array[4:-4, 4:-4] = value
    array[:3] = value // 2
    picture = Image.fromarray(array).convert(mode)
    picture.save(path)


def _files(result) -> dict[str, dict]:
    report = json.loads(result.report_path.read_text())
    return {f["path"]: f for f in report["files"]}


def test_flat_layout_with_a_csv_of_files_globs_and_words(tmp_path):
    site = tmp_path / "site"
    for i in range(3):
        image(site / "images" / f"covid_{i}.png", 200)
        image(site / "images" / f"pneu_{i}.jpg", 90)
    image(site / "images" / "extra.png")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "file,label\n"
        "images/covid_0.png,COVID\n"
        "images/covid_1.png,1\n"
        "images/covid_2.png,covid\n"
        "images/pneu_*.jpg,Pneumonia\n"
        "images/gone.png,1\n"
        "images/extra.png,maybe\n"
    )
    result = ingest_site(
        site,
        labels,
        tmp_path / "c",
        CONFIG,
        progress=False,
        label_map=parse_label_map("covid=1,pneumonia=0"),
    )
    got = {p.patient_id: (p.label, p.n_slices) for p in result.patients}
    # One folder holding both classes is no patient: each image is its own.
    assert got == {
        **{f"images/covid_{i}.png": (1, 1) for i in range(3)},
        **{f"images/pneu_{i}.jpg": (0, 1) for i in range(3)},
    }
    report = json.loads(result.report_path.read_text())
    problems = {p["line"]: p for p in report["label_problems"]}
    assert problems[6]["code"] == "unknown-file"
    assert problems[6]["message"].startswith(f"{labels}:6: 'images/gone.png'")
    assert problems[7]["code"] == "bad-label"
    assert "'maybe'" in problems[7]["message"]
    assert _files(result)["images/extra.png"]["code"] == "no-label"


def test_a_csv_of_patients_groups_per_patient_folders(tmp_path):
    site = tmp_path / "site"
    for pid, n in (("p1", 2), ("p2", 3)):
        for i in range(n):
            image(site / pid / f"{i}.png")
    (site / "labels.csv").write_text("patient_id;label\np1;1\np2;0\n")  # in SITE
    result = ingest_site(site, None, tmp_path / "c", CONFIG, progress=False)
    assert [(p.patient_id, p.label, p.n_slices) for p in result.patients] == [
        ("p1", 1, 2),
        ("p2", 0, 3),
    ]


def test_label_words_in_folder_names(tmp_path):
    site = tmp_path / "site"
    image(site / "person001_COVID19" / "a.png")
    image(site / "person001_COVID19" / "b.jpeg", mode="RGB")
    image(site / "NonCOVID_bacterial_pneumonia" / "x.png")
    image(site / "person003_covid_or_pneumonia" / "y.png")
    image(site / "person004" / "z.png")
    result = ingest_site(site, None, tmp_path / "c", CONFIG, progress=False)
    assert [(p.patient_id, p.label, p.n_slices) for p in result.patients] == [
        ("NonCOVID_bacterial_pneumonia", 0, 1),
        ("person001_COVID19", 1, 2),
    ]
    files = _files(result)
    both = files["person003_covid_or_pneumonia/y.png"]
    assert both["code"] == "label-conflict"
    assert "'person003_covid_or_pneumonia'" in both["reason"]
    assert files["person004/z.png"]["code"] == "no-label"
    assert len(both["reason"].splitlines()) == 1


def test_mixed_formats_modes_and_sizes_are_all_ingested(tmp_path):
    site = tmp_path / "site"
    image(site / "COVID" / "p1" / "grey.png", size=(115, 115))
    image(site / "COVID" / "p1" / "rgb.jpg", size=(300, 200), mode="RGB")
    image(site / "NonCOVID" / "p2" / "rgba.png", size=(60, 90), mode="RGBA")
    image(site / "NonCOVID" / "p2" / "grey.bmp", size=(50, 50))
    result = ingest_site(site, None, tmp_path / "c", CONFIG, progress=False)
    assert result.summary.slices == 4
    for patient in result.patients:
        slices = patient.load()
        assert slices.shape[1:] == (32, 32) and np.isfinite(slices).all()


def test_label_words():
    words = {"covid": 1, "covid19": 1, "noncovid": 0, "pneumonia": 0}
    assert label_words("person001_COVID19", words) == {1}
    assert label_words("Non_COVID", words) == {0}
    assert label_words("non-covid-cases", words) == {0}
    assert label_words("covid_vs_pneumonia", words) == {0, 1}
    assert label_words("person7", words) == set()
    assert label_words("covid-0", {**words, "0": 0}) == {1}  # a number, not a label


def test_bad_label_maps_are_refused():
    assert parse_label_map(" Covid=1, CAP=0 ") == {"covid": 1, "cap": 0}
    with pytest.raises(IngestError, match="'covid=2'"):
        parse_label_map("covid=2")


def test_cli_labels_images_and_fails_when_nothing_is_usable(tmp_path, capsys):
    site = tmp_path / "site"
    image(site / "COVID" / "a.png", 200)
    image(site / "NonCOVID" / "a.png", 60)  # same name: still two patients
    labels = tmp_path / "l.csv"
    labels.write_text("file,label\nCOVID/a.png,covid\nNonCOVID/a.png,other\n")
    base = ["ingest", "--site-dir", str(site), "--labels", str(labels), "--quiet"]
    args = [*base, "--out", str(tmp_path / "c"), "--image-size", "32"]
    assert main([*args, "--label-map", "covid=1,other=0"]) == 0
    assert "2 patients, 2 series, 2 slices kept (2 of 2 files used)" in (
        capsys.readouterr().out
    )
    # Without the map no label is readable: nothing usable is a failure.
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {site}: no patient")
    assert main([*args, "--label-map", "covid"]) == 2
    assert "--label-map item 'covid'" in capsys.readouterr().err


def test_metadata_that_encodes_the_label_is_warned_about(tmp_path):
    site = tmp_path / "shortcut"
    rng = np.random.default_rng(0)
    # COVID slices are RGB JPEGs, the others grey PNGs; sizes vary alike
    for word, suffix, mode in (("COVID", ".jpg", "RGB"), ("NonCOVID", ".png", "L")):
        for i in range(8):
            for j in range(2):
                side = int(rng.integers(40, 60))
                image(
                    site / word / f"{word}{i}" / f"{j}{suffix}", 100, (side, side), mode
                )
    result = ingest_site(site, None, tmp_path / "c", CONFIG, progress=False)
    report = json.loads(result.report_path.read_text())
    assert report["shortcuts"]["auc"]["format"] == 1.0
    assert result.summary.warnings and "format alone 1.00" in result.summary.warnings[0]
    assert "warning: shortcut: file metadata alone" in result.summary.text()


def test_metadata_unrelated_to_the_label_is_not_warned_about(tmp_path):
    site = tmp_path / "fair"
    rng = np.random.default_rng(1)
    for word in ("COVID", "NonCOVID"):
        for i in range(8):
            for j, (suffix, mode) in enumerate(((".png", "L"), (".jpg", "RGB"))):
                side = int(rng.integers(40, 60))
                image(
                    site / word / f"{word}{i}" / f"{j}{suffix}", 100, (side, side), mode
                )
    result = ingest_site(site, None, tmp_path / "c", CONFIG, progress=False)
    report = json.loads(result.report_path.read_text())
    assert report["shortcuts"]["auc"]["all"] < 0.8
    assert result.summary.warnings == ()
