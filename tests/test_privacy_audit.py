"""The memorisation audit flags a generator that copies a training slice and
leaves fresh samples alone; its summary carries no patient data."""

import json
from pathlib import Path

import numpy as np
import pytest

from client.privacy_audit import audit, audit_site, nearest_distances
from client.site import Site, site_data
from common.commands import main
from common.config import RunConfig
from common.model.bigbigan import downsample_for_d
from common.model.checkpoint import initial_model


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(0)
    queries, reference = rng.normal(size=(7, 4, 5)), rng.normal(size=(300, 4, 5))
    brute = [min(np.sqrt(np.mean((q - r) ** 2)) for r in reference) for q in queries]
    assert nearest_distances(queries, reference) == pytest.approx(brute, rel=1e-9)
    assert nearest_distances(reference[:3], reference) == pytest.approx(0, abs=1e-6)


@pytest.fixture(scope="module")
def site(tmp_path_factory, phantom_study):
    root = tmp_path_factory.mktemp("audit")
    study = phantom_study(0.2, 2)  # shared, read-only
    config = RunConfig(sim_data_root=str(study), out_dir=str(root / "out"))
    data = site_data(Site("hospital_a_ge", study / "hospital_a_ge", "train"), config)
    return root, config, data


def test_a_copied_training_slice_is_flagged_and_fresh_samples_are_not(site):
    _, config, data = site
    model = initial_model(config)
    train = data["train"].images
    heldout = np.concatenate([data["val"].images, data["test"].images])
    z = np.random.default_rng(1).standard_normal((24, config.model.z_dim))
    fresh = np.asarray(model.generator(z.astype(np.float32), training=False))
    copy = np.asarray(downsample_for_d(train[5:6], model.preset))
    near_copy = np.clip(
        copy + np.random.default_rng(2).normal(0, 0.01, copy.shape), -1, 1
    )
    samples = np.concatenate([fresh[:10], copy, fresh[10:], near_copy])
    report = audit(model, train, heldout, samples)
    assert report["flagged"] == [10, 25]  # the copy and the lightly noised copy
    pixel = report["pixel"]
    assert pixel["samples_to_train"]["q00"] < 0.02 < pixel["threshold"]
    assert 10 in report["feature"]["flagged"]  # E sees the copy as one too
    assert "inspect" in report["verdict"]
    clean = audit(model, train, heldout, fresh)
    assert clean["flagged"] == [] and "no sample" in clean["verdict"]


def test_privacy_audit_command_writes_a_summary_without_patient_data(site, tmp_path):
    root, config, _ = site
    model = initial_model(config)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config.to_flat()))
    np.savez(run / "global_weights.npz", *model.get_weights(), head=np.zeros(121))
    site_dir = Path(config.sim_data_root) / "hospital_a_ge"
    out = tmp_path / "audit.json"
    args = ["privacy-audit", "--model", str(run), "--site-dir", str(site_dir)]
    assert main([*args, "--samples", "32", "--out", str(out)]) == 0
    text = out.read_text()
    summary = json.loads(text)
    assert summary["n_samples"] == 32 and summary["flagged"] == []
    ids = [
        line.split(",")[0] for line in (site_dir / "labels.csv").read_text().split()[1:]
    ]
    assert ids and not any(pid in text for pid in ids)
    # a run whose G stayed at the sites has no global G to audit
    flat = {**config.to_flat(), "federated-parts": "e"}
    (run / "config.json").write_text(json.dumps(flat))
    with pytest.raises(ValueError, match="G never left the sites"):
        main([*args, "--samples", "8"])


def test_after_a_fedbn_run_the_audit_estimates_the_batchnorm_statistics(site, tmp_path):
    """FedBN's global G has only initial BatchNorm statistics: the audit first
    estimates G's on its own samples and E's on the site's slices, so it audits
    a generator that can draw, not one that cannot."""
    from common.model.adabn import adapt_batchnorm

    root, config, data = site
    model = initial_model(config)
    run = tmp_path / "run"
    run.mkdir()
    flat = {**config.to_flat(), "strategy": "fedbn"}
    (run / "config.json").write_text(json.dumps(flat))
    np.savez(run / "global_weights.npz", *model.get_weights(), head=np.zeros(121))
    report = audit_site(
        run, Path(config.sim_data_root) / "hospital_a_ge", n_samples=16, seed=3
    )
    z = np.random.default_rng(3).standard_normal((16, config.model.z_dim))
    z = z.astype(np.float32)
    heldout = np.concatenate([data["val"].images, data["test"].images])
    plain = audit(model, data["train"].images, heldout, np.asarray(model.generator(z)))
    adapt_batchnorm(model.generator, z)
    model.adapt_batchnorm(np.concatenate([data["train"].images, heldout]))
    expected = audit(
        model, data["train"].images, heldout, np.asarray(model.generator(z))
    )
    for space in ("pixel", "feature"):
        got = report[space]["samples_to_train"]["q50"]
        assert got == pytest.approx(expected[space]["samples_to_train"]["q50"])
    assert report["pixel"]["samples_to_train"]["q50"] != pytest.approx(
        plain["pixel"]["samples_to_train"]["q50"], rel=1e-3
    )
