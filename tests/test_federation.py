"""The whole chain in Flower's Simulation Engine: phantom DICOM sites, SecAgg+
BigBiGAN rounds, SecAgg+ linear head, evaluation of all four splits."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from deployment_harness import descendants

from common.commands import main
from common.config import RunConfig
from server.checkpointing import CHECKPOINT, load_checkpoint
from simulations.simulate import simulate

CONFIG = RunConfig(gan_rounds=2, logit_rounds=2)
SCALE, SLICES = 0.3, 2


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, phantom_study):
    """One uninterrupted run, shared: the chain's checks and the resume's target."""
    out = tmp_path_factory.mktemp("reference")
    shutil.copytree(phantom_study(SCALE, SLICES), out / "data")
    return out, simulate(out, CONFIG, scale=SCALE, slices_per_patient=SLICES)


@pytest.mark.simulation
@pytest.mark.slow
def test_whole_chain_two_training_sites_and_one_external(reference_run):
    tmp_path, metrics = reference_run
    config = CONFIG

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
    # every secure round timed: the slowest site's work fits in the round's wall
    timing = metrics["timing"]
    assert [r["phase"] for r in timing["rounds"]] == ["gan"] * 2 + [
        "moments",
        "head",
    ] + ["logit"] * 2 + ["eval"]
    for r in timing["rounds"]:
        assert 0 < r["site_seconds"] < r["seconds"], r
        assert r["site_peak_rss_mb"] > 100, r  # a process holding TensorFlow
    assert 0 < timing["overhead"] < 1
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
    # baselines in the same rounds (7 above): every head on every split, and
    # at the external site the paired differences, as aggregates
    from common.evaluation.linear_head import RIDGE_GRID
    from common.evaluation.radiomics import N_FEATURES

    assert on_disk["data"]["synthetic"] is True
    assert weights["head_radiomics_lm"].shape == (N_FEATURES + 1,)
    for kind in ("radiomics", "untrained"):
        entry = on_disk["baselines"][kind]
        for head in ("lm", "ridge"):
            for split in ("train", "val", "test", "external"):
                m = entry[head]["splits"][split]
                assert len(m["auc_ci"]) == 2 and m["n_patients"] > 0, (kind, split)
            paired = entry["external_difference"][head]
            assert set(paired) == {"diff", "diff_ci", "p"}
            ext = entry[head]["splits"]["external"]["auc"]
            model = (on_disk if head == "lm" else on_disk["model_ridge"])["splits"]
            assert paired["diff"] == pytest.approx(model["external"]["auc"] - ext)
        assert on_disk["ridge"][kind]["lambda"] in RIDGE_GRID
    n_train = sum(metrics["splits"]["train"][k] for k in ("n_patients",))
    assert on_disk["baselines"]["radiomics"]["lm"]["splits"]["train"]["n_patients"] == (
        n_train
    )


def _kill_tree(proc: subprocess.Popen) -> None:
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.simulation
@pytest.mark.slow
def test_a_run_killed_after_round_1_resumes_and_ends_where_an_unbroken_one_does(
    reference_run, tmp_path, capfd
):
    reference, ref_metrics = reference_run
    shutil.copytree(reference / "data", tmp_path / "data")
    run = (
        "import sys; from pathlib import Path; from common.config import RunConfig; "
        "from simulations.simulate import simulate; "
        "simulate(Path(sys.argv[1]), RunConfig(gan_rounds=2, logit_rounds=2), "
        f"scale={SCALE}, slices_per_patient={SLICES})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", run, str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while not (tmp_path / CHECKPOINT).exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.5)
    finally:
        _kill_tree(proc)  # the server, Ray and its workers, mid round 2
    assert not (tmp_path / "metrics.json").exists()
    assert load_checkpoint(tmp_path, CONFIG).round == 1

    capfd.readouterr()
    assert main(["simulate", "--out", str(tmp_path), "--resume"]) == 0
    # the terminal: a line per phase and round, the results; the rest in run.log
    terminal = capfd.readouterr()
    shown = (terminal.out + terminal.err).splitlines()
    assert len(shown) <= 40, shown
    assert any(line.startswith("round 2/2 ") for line in shown), shown
    assert not any("Stage" in line or "INFO" in line for line in shown), shown
    run_log = (tmp_path / "run.log").read_text()
    # the header and what the simulated sites' processes printed (Ray
    # forwards it as "(ClientAppActor pid=...) ..."); under pytest, Python's
    # logging goes to pytest's own handlers instead
    assert "(resumed)" in run_log and "pid=" in run_log
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert metrics["secagg_rounds"] == ref_metrics["secagg_rounds"]
    # round 1 from the checkpoint, round 2 trained again, as the unbroken run did:
    # each round is a function of the weights, the data and the seed (fresh
    # optimisers, seeded noise, seeded SecAgg+ rounding)
    with (
        np.load(tmp_path / "global_weights.npz") as resumed,
        np.load(reference / "global_weights.npz") as unbroken,
    ):
        assert resumed.files == unbroken.files
        for key in unbroken.files:
            assert np.array_equal(resumed[key], unbroken[key]), key
    assert (
        metrics["splits"]
        == json.loads((reference / "metrics.json").read_text())["splits"]
    )
