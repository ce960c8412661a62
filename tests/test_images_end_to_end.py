"""A public-style image collection end to end: ingest, `simulate --scenario
real-images` in Flower's Simulation Engine, then `predict` on one PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.commands import main


def _collection(root, format_by_label: bool = False):
    """3 hospitals x 6 patients in folders named with their label words,
    PNG and JPEG, grey and RGB, of several sizes; and the manifest. With
    `format_by_label` COVID-19 slices are grey PNGs and the others RGB JPEGs:
    the file format encodes the label (a shortcut)."""
    rng = np.random.default_rng(0)
    rows = []
    for h, hospital in enumerate(("north", "south", "east")):
        for i in range(6):
            word = "COVID19" if i % 2 else "NonCOVID_bacterial_pneumonia"
            folder = root / "images" / f"person{h}{i}_{word}"
            folder.mkdir(parents=True)
            kinds = ((".png", "L", 48), (".jpg", "RGB", 60))
            if format_by_label:
                kinds = (kinds[0 if i % 2 else 1],) * 2
            for j, (suffix, mode, side) in enumerate(kinds):
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


def _single_class_south(tmp_path: Path) -> tuple[Path, Path]:
    """The collection with south keeping only its COVID-19 patients: a
    single-class training site."""
    images, manifest = _collection(tmp_path)
    rows = manifest.read_text().splitlines()
    manifest.write_text(
        "\n".join(r for r in rows if "south" not in r or "_COVID19" in r) + "\n"
    )
    for folder in images.glob("person1*_NonCOVID*"):
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    return images, manifest


def test_simulate_refuses_single_class_sites_before_flower(tmp_path, capfd):
    images, manifest = _single_class_south(tmp_path)
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


def _simulate(images, manifest, run) -> int:
    """A tiny real-images run, east held out."""
    args = ["simulate", "--out", str(run), "--scenario", "real-images"]
    sets = [f"images.root={images}", f"images.manifest={manifest}"]
    config = ["--run-config", "gan-rounds=1", "logit-rounds=0", "local-epochs=1"]
    return main([*args, "--scenario-set", *sets, "images.external=east", *config])


@pytest.mark.simulation
@pytest.mark.slow
def test_a_format_shortcut_is_warned_about_in_ingest_and_in_the_run(tmp_path, capfd):
    images, manifest = _collection(tmp_path, format_by_label=True)
    args = ["ingest", "--site-dir", str(images), "--out", str(tmp_path / "c")]
    assert main([*args, "--image-size", "32"]) == 0
    assert "warning: shortcut: file metadata alone" in capfd.readouterr().out
    run = tmp_path / "run"
    assert _simulate(images, manifest, run) == 0
    printed = capfd.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    # every site (2 training, the external) sent its AUC: format predicts it all
    assert sorted(s["role"] for s in metrics["site_shortcuts"]) == [
        "external",
        "train",
        "train",
    ]
    assert {s["auc"] for s in metrics["site_shortcuts"]} == {1.0}
    warned = [line for line in printed.splitlines() if "shortcut:" in line]
    assert len(warned) == 3 and all(
        line.startswith("warning: site node") for line in warned
    )
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert html.count("shortcut: file metadata alone") == 3


@pytest.mark.simulation
@pytest.mark.slow
def test_a_clean_collection_gets_no_shortcut_warning_in_the_run(tmp_path, capfd):
    images, manifest = _collection(tmp_path)
    run = tmp_path / "run"
    assert _simulate(images, manifest, run) == 0
    assert "shortcut" not in capfd.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["site_shortcuts"]) == 3  # sent, and all below the threshold
    assert max(s["auc"] for s in metrics["site_shortcuts"]) < 0.8
    assert main(["report", str(run)]) == 0
    assert "shortcut" not in (run / "report.html").read_text()


@pytest.mark.simulation
@pytest.mark.slow
def test_the_server_app_refuses_single_class_sites_too(
    tmp_path, capfd, caplog, monkeypatch
):
    """A deployment has no `simulate` check: the ServerApp's own (from each
    site's class counts in its role reply) refuses before round 1."""
    import simulations.simulate as simulate_module

    monkeypatch.setattr(simulate_module, "check_sites", lambda config: {})
    images, manifest = _single_class_south(tmp_path)
    run = tmp_path / "run"
    assert _simulate(images, manifest, run) != 0
    shown = capfd.readouterr()
    logged = caplog.text + shown.out + shown.err
    refused = [line for line in logged.splitlines() if "site refused:" in line]
    assert len(refused) >= 1
    assert all("(train): 3 COVID-19, 0 other pneumonia patients" in r for r in refused)
    assert not (run / "metrics.json").exists()
