"""The whole chain in Flower's Simulation Engine: phantom DICOM sites, SecAgg+
BigBiGAN rounds, SecAgg+ linear head, evaluation of all four splits."""

import json

import numpy as np
import pytest

from common.config import RunConfig
from simulations.simulate import simulate


@pytest.mark.slow
def test_whole_chain_two_training_sites_and_one_external(tmp_path):
    config = RunConfig(gan_rounds=2, logit_rounds=2)
    metrics = simulate(tmp_path, config, scale=0.3, slices_per_patient=2)

    for split in ("train", "val", "test", "external"):
        m = metrics["splits"][split]
        assert m["n_patients"] > 0 and m["n_slices"] >= m["n_patients"], split
        assert 0.0 <= m["sensitivity"] <= 1.0 and 0.0 <= m["specificity"] <= 1.0
        assert np.isfinite(m["auc"]), split
    assert metrics["weights_changed"] > 0
    # 2 BigBiGAN, 2 lm head (moments, statistics), 2 logistic head, 1 evaluation
    assert metrics["secagg_rounds"] == 7
    # training sites' histograms only as a SecAgg+ sum; the external one alone
    assert metrics["secure_eval_sites"] == 2
    assert metrics["plain_eval_roles"] == ["external"]
    # the SecAgg+ sum of counts is exact: every hospital A patient and slice, once
    data = tmp_path / "data"
    a_sites = [data / "hospital_a_ge", data / "hospital_a_neuviz"]
    patients = sum(len((s / "labels.csv").read_text().split()) - 1 for s in a_sites)
    slices = sum(len(list(s.rglob("*.dcm"))) for s in a_sites)
    splits = [metrics["splits"][k] for k in ("train", "val", "test")]
    assert sum(m["n_patients"] for m in splits) == patients
    assert sum(m["n_slices"] for m in splits) == slices
    assert metrics["train_message_roles"] == ["train"]  # external never trained
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["splits"]["external"]["n_patients"] == 10  # scale 0.3 of 15 + 20
    for split in ("train", "val", "test", "external"):  # DeLong and Wilson 95% CIs
        for key in ("auc_ci", "sensitivity_ci", "specificity_ci"):
            assert len(on_disk["splits"][split][key]) == 2, (split, key)
    assert on_disk["threshold_split"] == "val"
    # comparisons (simulation only): the SecAgg+ head equals the pooled fit
    table = on_disk["comparisons"]["table"]
    assert {
        "federated lm",
        "pooled lm (not federated)",
        "pooled SVM (not federated)",
        "pooled KNN (not federated)",
    } <= set(table)
    for target, m in table["federated lm"].items():
        pooled_m = table["pooled lm (not federated)"][target]
        assert round(m["auc"], 3) == round(pooled_m["auc"], 3), target
    for name in ("federated logistic", "pooled logistic (not federated)"):
        assert np.isfinite(table[name]["all test"]["auc"]), name
    samples = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert samples == ["round_001.png", "round_002.png"]  # G(z), no patient data
    files = ("config.json", "global_weights.npz", "histograms.npz", "roc.png")
    for name in (*files, "losses.png"):
        assert (tmp_path / name).stat().st_size > 0
    # the external site sent aggregates and coarse counts, no fine histogram
    with np.load(tmp_path / "histograms.npz") as hists:
        assert hists["external/coarse"]
        assert (
            hists["external/patient/pos"].sum() + hists["external/patient/neg"].sum()
            == (on_disk["splits"]["external"]["n_patients"])
        )
    assert (tmp_path / "reconstructions.png").stat().st_size > 0  # simulation only
    weights = np.load(tmp_path / "global_weights.npz")
    assert weights["head"].shape == (config.model.z_dim + 1,)
