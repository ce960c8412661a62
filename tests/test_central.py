"""The centralised reference run and feature extraction on phantom sites."""

import csv
import dataclasses

import numpy as np
import pytest

from common.commands import main
from common.config import RunConfig
from common.evaluation.roc_stats import auc_ci
from common.model.checkpoint import load_model
from simulations.central import (
    PROBE_FEATURES,
    cv_patient_scores,
    paired_auc_difference,
    patient_folds,
    train_central,
)


@pytest.fixture(scope="module")
def study(phantom_study):
    return phantom_study(0.2, 2)


@pytest.fixture(scope="module")
def central(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("central")
    config = RunConfig(gan_rounds=1, sim_data_root=str(study))
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, local_epochs=2)
    )
    return out, train_central(out, config, probe_every=2)


def test_central_run_trains_and_reports_probes_of_both_encoders(central):
    out, metrics = central
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert sorted(p.name for p in (out / "recon").iterdir()) == [
        "epoch_001.png",
        "epoch_002.png",
    ]
    assert (out / "losses.png").read_bytes().startswith(b"\x89PNG")
    for h in metrics["history"]:
        assert np.isfinite([h["d"], h["e"], h["g"], h["joint_pairing"]]).all()
        assert h["generator_spread"] > 0.0
    spread = metrics["generator_spread"]
    assert spread["trained"] == metrics["history"][-1]["generator_spread"]
    assert 0.0 < spread["real"] < 1.0
    # --probe-every 2: the probe of epoch 2 is the final one (same model, folds)
    assert "probe_cv" not in metrics["history"][0]
    cv = metrics["probe_cv"]
    assert metrics["history"][1]["probe_cv"] == {
        name: cv[name]["trained"] for name in PROBE_FEATURES
    }
    results = [
        metrics[kind][split]
        for kind in ("probe_random", "probe_trained")
        for split in ("val", "test", "hospital_b")
    ]
    results += [
        cv[name][kind] for name in PROBE_FEATURES for kind in ("random", "trained")
    ]
    for m in results:
        low, high = m["ci"]
        assert 0.0 <= low <= m["auc"] <= high <= 1.0
    for name in PROBE_FEATURES:
        assert cv[name]["random"] != cv[name]["trained"]
        diff = cv[name]["difference"]
        assert diff["difference"] == pytest.approx(
            cv[name]["trained"]["auc"] - cv[name]["random"]["auc"]
        )
    model = load_model(out / "model.npz")
    assert model.preset.name == "tiny"


def test_frozen_encoder_mode_trains_nothing_and_probes_the_initial_encoder(
    study, tmp_path
):
    config = RunConfig(gan_rounds=3, sim_data_root=str(study), encoder_mode="frozen")
    metrics = train_central(tmp_path, config, save_grids=False)
    assert metrics["epochs"] == 0 and metrics["history"] == []
    assert metrics["probe_trained"] == metrics["probe_random"]
    for cv in metrics["probe_cv"].values():
        assert cv["trained"] == cv["random"] and cv["difference"]["difference"] == 0


def test_supervised_ceiling_trains_e_on_the_labels_and_nothing_else(study, tmp_path):
    """--supervised: E (with one logistic unit on z_mean) learns the labels for
    the same epochs; G and D keep their initial weights; the labels' loss
    falls."""
    config = RunConfig(gan_rounds=1, sim_data_root=str(study), out_dir=str(tmp_path))
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, local_epochs=4)
    )
    from common.model.checkpoint import initial_model

    start = initial_model(config)
    metrics = train_central(tmp_path, config, save_grids=False, supervised=True)
    assert metrics["mode"] == "supervised" and metrics["epochs"] == 4
    bce = [h["bce"] for h in metrics["history"]]
    assert bce[-1] < bce[0]
    trained = load_model(tmp_path / "model.npz")
    for name in ("generator", "discriminator", "encoder"):
        pairs = zip(
            getattr(trained, name).weights, getattr(start, name).weights, strict=True
        )
        same = all(np.array_equal(a.numpy(), b.numpy()) for a, b in pairs)
        assert same == (name != "encoder"), name


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


def _slices(n_patients: int, per_patient: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.permutation(np.arange(n_patients) % 2), per_patient)
    patient = np.repeat(np.arange(n_patients), per_patient)
    return rng, labels, patient


def test_patient_folds_keep_patients_together_and_classes_balanced():
    _, labels, patient = _slices(53, 3, seed=0)
    fold = patient_folds(patient, labels, folds=5, seed=1)
    for p in np.unique(patient):
        assert len(set(fold[patient == p])) == 1
    first = np.unique(patient, return_index=True)[1]
    for cls in (0, 1):
        counts = np.bincount(fold[first][labels[first] == cls], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_cv_probe_is_unbiased_on_features_without_signal():
    """Pure-noise features give a mean out-of-fold AUC of 0.5 (unstratified folds
    gave about 0.46 here: a fold with more positives gets a lower intercept)."""
    aucs = []
    for draw in range(40):
        rng, labels, patient = _slices(60, 3, seed=draw)
        features = rng.standard_normal((len(labels), 20))
        aucs.append(auc_ci(*cv_patient_scores(features, labels, patient, 1e-3))[0])
    # one draw's SD is about 0.075, so the mean of 40 has SD 0.012
    assert abs(np.mean(aucs) - 0.5) < 0.04


def test_repeated_cv_probe_depends_less_on_the_draw_of_folds():
    """Averaging out-of-fold scores over repeats narrows the spread of the AUC
    between fold seeds (the single-draw spread is as large as a training effect)."""
    rng, labels, patient = _slices(80, 3, seed=0)
    features = rng.standard_normal((len(labels), 40)) + 0.15 * labels[:, None]

    def spread(repeats: int) -> float:
        aucs = [
            auc_ci(
                *cv_patient_scores(
                    features, labels, patient, 1e-3, seed=10 * s, repeats=repeats
                )
            )[0]
            for s in range(8)
        ]
        return float(np.std(aucs))

    assert spread(5) < 0.7 * spread(1)


def test_cv_probe_does_not_depend_on_the_feature_scale():
    """An untrained encoder's z_mean has an SD near 0.003: the probe must see the
    same signal as at unit scale (a ridge on raw features shrank it to nothing)."""
    rng, labels, patient = _slices(60, 3, seed=0)
    features = rng.standard_normal((len(labels), 30)) + 0.5 * labels[:, None]
    unit = auc_ci(*cv_patient_scores(features, labels, patient, 1e-3))[0]
    small = auc_ci(*cv_patient_scores(1e-3 * features, labels, patient, 1e-3))[0]
    assert unit > 0.9 and small == pytest.approx(unit, abs=1e-6)


def test_paired_auc_difference_matches_a_patient_bootstrap():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(120) % 2)
    shared = rng.standard_normal(120)  # correlated scores, as two encoders give
    a = labels + shared + rng.standard_normal(120)
    b = 0.5 * labels + shared + rng.standard_normal(120)
    result = paired_auc_difference(a, b, labels)
    assert result["difference"] == pytest.approx(
        auc_ci(a, labels)[0] - auc_ci(b, labels)[0]
    )
    boot = []
    for _ in range(400):
        i = rng.integers(0, 120, 120)
        if labels[i].min() == labels[i].max():
            continue
        boot.append(auc_ci(a[i], labels[i])[0] - auc_ci(b[i], labels[i])[0])
    low, high = result["ci"]
    assert (high - low) / (2 * 1.96) == pytest.approx(np.std(boot), rel=0.2)
    same = paired_auc_difference(a, a + 5.0, labels)  # same ranks
    assert same["difference"] == 0.0 and same["ci"] == [0.0, 0.0]
    assert same["p"] == 1.0
