"""The centralised reference run and feature extraction on phantom sites."""

import csv
import dataclasses

import numpy as np
import pytest

from common.checkpoint import load_model
from common.config import RunConfig
from simulations.central import train_central
from simulations.cli import main
from simulations.phantoms import write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_study(root, scale=0.2, seed=0, slices_per_patient=2)
    return root


@pytest.fixture(scope="module")
def central(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("central")
    config = RunConfig(gan_rounds=1, sim_data_root=str(study))
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, local_epochs=2)
    )
    return out, train_central(out, config)


def test_central_run_trains_and_reports_probes_of_both_encoders(central):
    out, metrics = central
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert sorted(p.name for p in (out / "recon").iterdir()) == [
        "epoch_001.png",
        "epoch_002.png",
    ]
    for kind in ("probe_random", "probe_trained"):
        assert set(metrics[kind]) == {"val", "test", "hospital_b", "cv"}
        for m in metrics[kind].values():
            low, high = m["ci"]
            assert 0.0 <= low <= m["auc"] <= high <= 1.0
    assert metrics["probe_random"]["cv"] != metrics["probe_trained"]["cv"]
    model = load_model(out / "model.npz")
    assert model.preset.name == "tiny"


def test_frozen_encoder_mode_trains_nothing_and_probes_the_initial_encoder(
    study, tmp_path
):
    config = RunConfig(gan_rounds=3, sim_data_root=str(study), encoder_mode="frozen")
    metrics = train_central(tmp_path, config, save_grids=False)
    assert metrics["epochs"] == 0 and metrics["history"] == []
    assert metrics["probe_trained"] == metrics["probe_random"]


def test_extract_writes_every_output_with_patient_ids(central, study, tmp_path):
    out, _ = central
    features = tmp_path / "features.npz"
    site = study / "hospital_b"
    assert (
        main(
            [
                "extract",
                "--model",
                str(out / "model.npz"),
                "--site-dir",
                str(site),
                "--out",
                str(features),
                "--cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    data = np.load(features)
    n = len(data["label"])
    assert data["z_mean"].shape == (n, 120) and data["z_sample"].shape == (n, 120)
    assert data["avepool_feat"].shape[0] == n and data["bn_crelu_feat"].shape[0] == n
    assert (data["z_stdev"] > 0).all()
    with (site / "labels.csv").open() as handle:
        labels = {r["patient_id"]: int(r["label"]) for r in csv.DictReader(handle)}
    for pid, label in zip(data["patient_id"], data["label"], strict=True):
        assert labels[str(pid)] == label
    assert set(map(str, data["patient_id"])) == set(labels)
    assert (tmp_path / "cache").is_dir()  # never inside the site folder
