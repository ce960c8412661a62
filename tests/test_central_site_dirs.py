"""`train-central --site-dir DIR`: any image or DICOM folders as the sites of
a central run; a bad folder is one line of error naming it."""

from __future__ import annotations

import json

import pytest
from test_images_end_to_end import _collection

from common.commands import main


@pytest.mark.slow
def test_train_central_takes_a_site_dir_of_images(tmp_path, capsys):
    images, _ = _collection(tmp_path)  # 18 patients, 36 slices, one folder
    out = tmp_path / "central"
    args = ["train-central", "--out", str(out), "--site-dir", str(images)]
    config = ["--run-config", "gan-rounds=1", "local-epochs=1"]
    assert main([*args, *config]) == 0
    printed = capsys.readouterr().out
    assert "probe_trained" in printed and f"run directory: {out}" in printed
    linked = [f for f in (out / "data" / "images").rglob("*") if f.is_file()]
    assert len(linked) == 36
    # the source folder is only read: its 36 images and nothing more
    assert len([f for f in images.rglob("*") if f.is_file()]) == 36


@pytest.mark.slow
def test_train_central_takes_a_flat_site_dir_labelled_by_its_csv(tmp_path, capsys):
    """A flat folder of PNG and JPEG slices with SITE/labels.csv (file,label):
    each image its own patient, labelled by the CSV alone."""
    import numpy as np
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for i in range(12):
        name = f"scan{i:02d}" + (".png" if i % 3 else ".jpg")
        pixels = rng.integers(0, 255, (40 + i, 40), dtype=np.uint8)
        Image.fromarray(pixels).convert("RGB" if i % 4 else "L").save(flat / name)
        rows.append(f"{name},{i % 2}")
    (flat / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "central"
    args = ["train-central", "--out", str(out), "--site-dir", str(flat)]
    config = ["--run-config", "gan-rounds=1", "local-epochs=1"]
    assert main([*args, *config]) == 0
    assert "probe_trained" in capsys.readouterr().out
    report = out / "ingest-cache" / "flat" / "ingest_report.json"
    kept = json.loads(report.read_text())["patients"]
    assert len(kept) == 12
    assert sorted(p["label"] for p in kept) == [0] * 6 + [1] * 6


def test_a_bad_site_dir_is_one_line_naming_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    args = ["train-central", "--out", str(tmp_path / "c"), "--site-dir", str(missing)]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert str(stop.value) == f"error: --site-dir {missing}: not a folder"
    capsys.readouterr()
    other = ["--site-dir", str(tmp_path), "--scenario", "paper"]
    with pytest.raises(SystemExit) as stop:
        main(["train-central", "--out", str(tmp_path / "c2"), *other])
    assert stop.value.code == 2  # a usage error, before any folder is made
    assert (
        "error: --site-dir and --scenario: give one of them" in capsys.readouterr().err
    )
    assert not (tmp_path / "c2").exists()


def test_site_dirs_are_linked_with_their_roles(tmp_path):
    from simulations.site_dirs import SiteDirError, link_site_dirs

    for name in ("north", "east"):
        (tmp_path / "src" / name / "COVID" / "p1").mkdir(parents=True)
        (tmp_path / "src" / name / "COVID" / "p1" / "0.png").write_bytes(b"x")
    north, east = tmp_path / "src" / "north", tmp_path / "src" / "east"
    data = tmp_path / "data"
    assert link_site_dirs([north], [east], data) == "east:external,north:train"
    assert (data / "east" / "COVID" / "p1" / "0.png").read_bytes() == b"x"
    with pytest.raises(SiteDirError, match="another site folder is named 'north'"):
        link_site_dirs([north, north], [], tmp_path / "d2")
