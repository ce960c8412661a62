"""A two-seed sweep of the tiny preset, end to end, and the sweep file's checks."""

import csv
import json

import numpy as np
import pydicom
import pytest

from common.config import RunConfig
from simulations import central as central_module
from simulations import simulate as simulate_module
from simulations.scenarios import ScenarioError
from simulations.sweep import SWEEP_CSV, SWEEP_PNG, load_sweep, run_sweep

SWEEP = """
scenarios = ["paper"]
strategies = ["fedavgm"]
seeds = [0, 1]
scale = 0.12
slices = 2
central = true
[run-config]
gan-rounds = 1
logit-rounds = 0
local-epochs = 1
"""


@pytest.mark.simulation
@pytest.mark.extended
def test_a_two_seed_sweep_writes_its_table_and_plot_and_resumes(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(SWEEP)
    out = tmp_path / "out"
    base = RunConfig().to_flat()
    rows = run_sweep(sweep, out, base)

    with (out / SWEEP_CSV).open(newline="") as handle:
        table = list(csv.DictReader(handle))
    # per seed: federated, its ridge head, 4 baseline heads, pooled head, 2
    # local-only, and centralized
    assert len(table) == len(rows) == 2 * (1 + 1 + 4 + 1 + 2 + 1)
    baselines = {
        f"{k} {h}" for k in ("radiomics", "untrained") for h in ("lm", "ridge")
    }
    for seed in (0, 1):
        mine = [r for r in table if r["seed"] == str(seed)]
        settings = {"federated", "pooled head", "local-only", "centralized"}
        assert {r["setting"] for r in mine} == settings | baselines | {
            "federated ridge"
        }
        for r in mine:
            if r["setting"] in baselines:
                low, high = float(r["diff_ci_low"]), float(r["diff_ci_high"])
                assert low <= float(r["model_minus_this"]) <= high
        central = next(r for r in mine if r["setting"] == "centralized")
        assert 0 <= float(central["external_auc"]) <= 1
        assert (out / central["run"] / "model.npz").is_file()
        fed = next(r for r in mine if r["setting"] == "federated")
        auc, low, high = (float(fed[k]) for k in ("external_auc", "ci_low", "ci_high"))
        assert 0 <= low <= auc <= high <= 1 and int(fed["external_patients"]) > 0
        assert fed["strategy"] == "fedavgm" and fed["scenario"] == "paper"
        # the link's cost per BigBiGAN round, from the run's own payload count
        payload = json.loads((out / fed["run"] / "metrics.json").read_text())["payload"]
        assert float(fed["up_mb"]) == round(payload["up_bytes"] / 1e6, 3) > 0
        assert float(fed["down_mb"]) == round(payload["down_bytes"] / 1e6, 3) > 0
        assert central["up_mb"] == ""  # no federated rounds
        # the server optimiser's state went into the run's checkpoint
        with np.load(out / fed["run"] / "checkpoint.npz") as ckpt:
            n_weights = sum(k.startswith("arr_") for k in ckpt.files)
            assert sum(k.startswith("opt_") for k in ckpt.files) == n_weights
    # the two seeds drew two different phantom studies (other anatomy)
    first = [
        pydicom.dcmread(
            out / "data" / f"paper__s{s}" / "hospital_b" / "dicom" / "B-0001" / "01.dcm"
        ).pixel_array
        for s in (0, 1)
    ]
    assert not np.array_equal(*first)
    assert (out / SWEEP_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # run again: finished runs are read back, nothing trains again
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was simulated again")

    monkeypatch.setattr(simulate_module, "simulate", refuse)
    monkeypatch.setattr(central_module, "train_central", refuse)
    assert run_sweep(sweep, out, base) == rows


def test_sweep_files_are_checked_before_any_run(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('strategies = ["fedavg", "scaffold"]\n')
    with pytest.raises(ScenarioError, match=r"strategies \['scaffold'\] unknown"):
        load_sweep(bad)
    bad.write_text('scenarios = ["paper", "mars"]\n')
    with pytest.raises(ScenarioError, match="'mars' not found"):
        load_sweep(bad)
    bad.write_text("seed = [0]\n")
    with pytest.raises(ScenarioError, match=r"unknown keys \['seed'\]"):
        load_sweep(bad)


def test_the_benchmark_sweep_files_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "sweeps"
    sweep = load_sweep(folder / "baselines.toml")
    assert {"paper", "scanner-shift", "label-skew", "size-skew"} <= set(sweep.scenarios)
    assert load_sweep(folder / "federated_parts.toml").federated_parts


def test_a_runs_heads_become_sweep_rows_with_their_paired_differences():
    from simulations.sweep import _head_rows

    split = {"auc": 0.7, "auc_ci": [0.5, 0.9], "n_patients": 18}
    summary = {"splits": {"external": split}}
    paired = {"diff": 0.1, "diff_ci": [-0.1, 0.3], "p": 0.3}
    metrics = {
        "model_ridge": summary,
        "baselines": {
            "radiomics": {
                "lm": summary,
                "ridge": summary,
                "external_difference": {"lm": paired, "ridge": None},
            }
        },
    }
    rows = _head_rows({"run": "r"}, metrics)
    assert [r["setting"] for r in rows] == [
        "federated ridge",
        "radiomics lm",
        "radiomics ridge",
    ]
    assert rows[1]["model_minus_this"] == 0.1 and rows[1]["diff_ci_low"] == -0.1
    assert "model_minus_this" not in rows[2] and rows[2]["external_auc"] == 0.7
