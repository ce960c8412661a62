"""A public-style image collection end to end: ingest, `simulate --scenario
real-images` in Flower's Simulation Engine, then `predict` on one PNG."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from common.commands import main


def _collection(root):
    """3 hospitals x 6 patients in folders named with their label words,
    PNG and JPEG, grey and RGB, of several sizes; and the manifest."""
    rng = np.random.default_rng(0)
    rows = []
    for h, hospital in enumerate(("north", "south", "east")):
        for i in range(6):
            word = "COVID19" if i % 2 else "NonCOVID_bacterial_pneumonia"
            folder = root / "images" / f"person{h}{i}_{word}"
            folder.mkdir(parents=True)
            for j, (suffix, mode, side) in enumerate(
                ((".png", "L", 48), (".jpg", "RGB", 60))
            ):
                pixels = rng.integers(0, 255, (side, side), dtype=np.uint8)
                pixels[8:-8, 8:-8] //= 2 if i % 2 else 1
                image = Image.fromarray(pixels).convert(mode)
                image.save(folder / f"{j}{suffix}")
            rows.append((folder.name, hospital))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([("patient", "hospital"), *rows])
    return root / "images", manifest


@pytest.mark.simulation
@pytest.mark.slow
def test_images_ingest_simulate_and_predict_a_png(tmp_path, capsys):
    images, manifest = _collection(tmp_path)
    args = ["ingest", "--site-dir", str(images), "--out", str(tmp_path / "c")]
    assert main([*args, "--quiet", "--image-size", "32"]) == 0
    assert "18 patients, 18 series, 36 slices kept" in capsys.readouterr().out
    run = tmp_path / "run"
    assert (
        main(
            [
                "simulate",
                "--out",
                str(run),
                "--scenario",
                "real-images",
                "--scenario-set",
                f"images.root={images}",
                f"images.manifest={manifest}",
                "images.external=east",
                "--run-config",
                "gan-rounds=1",
                "logit-rounds=0",
                "local-epochs=1",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["kind"] == "linked image folders"
    assert metrics["splits"]["external"]["n_patients"] == 6
    png = images / "person01_COVID19" / "0.png"
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--input", str(png)]) == 0
    assert "0.png: score" in capsys.readouterr().out


def test_simulate_refuses_single_class_sites_before_flower(tmp_path, capfd):
    images, manifest = _collection(tmp_path)
    rows = manifest.read_text().splitlines()
    # south keeps only its COVID-19 patients: a single-class training site
    manifest.write_text(
        "\n".join(r for r in rows if "south" not in r or "_COVID19" in r) + "\n"
    )
    for folder in images.glob("person1*_NonCOVID*"):
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    args = ["simulate", "--out", str(tmp_path / "run"), "--scenario", "real-images"]
    sets = [f"images.root={images}", f"images.manifest={manifest}"]
    assert main([*args, "--scenario-set", *sets, "images.external=east"]) == 2
    shown = capfd.readouterr()
    errors = [line for line in shown.out.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: site south (train): 3 COVID-19, 0 other pneumonia patients; "
        "training needs at least 2 of each class (min-patients-per-class) (see "
        f"{tmp_path / 'run' / 'ingest-cache' / 'south' / 'ingest_report.json'})"
    ]
    assert "Traceback" not in shown.out + shown.err
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_train_central_takes_a_scenario_of_real_images(tmp_path, capsys):
    images, manifest = _collection(tmp_path)
    out = tmp_path / "central"
    args = ["train-central", "--out", str(out), "--scenario", "real-images"]
    sets = [f"images.root={images}", f"images.manifest={manifest}"]
    config = ["--run-config", "gan-rounds=1", "local-epochs=1"]
    assert main([*args, "--scenario-set", *sets, "images.external=east", *config]) == 0
    printed = capsys.readouterr().out
    # the probes' external rows are the east site's 6 linked patients
    assert "probe_trained east" in printed and "patients 6" in printed
    assert json.loads((out / "data" / "scenario.json").read_text())["sim_sites"] == (
        "east:external,north:train,south:train"
    )
    with pytest.raises(SystemExit, match="images.external 'west' is not a site"):
        other = ["train-central", "--out", str(tmp_path / "c2"), "--scenario"]
        main([*other, "real-images", "--scenario-set", *sets, "images.external=west"])
