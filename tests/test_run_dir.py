"""A run is never lost by a typo (issue 22, part 3): an existing run is refused
unless resumed or overwritten, `--overwrite` removes only the run's own files,
and every bad run config value stops the command before anything starts, in
one line per problem."""

from __future__ import annotations

import hashlib
import math

import pytest

import simulations.simulate as simulate_module
from common.commands import main
from common.config import RANGES, ConfigError, RunConfig
from server.run_dir import RUN_FILES, RunDirError, claim_run_dir


def tree(root) -> dict[str, str]:
    """Every file under `root` and its SHA-256 (links by target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture()
def finished_run(tmp_path):
    """A run folder as `simulate` leaves it, plus the user's own files."""
    run = tmp_path / "run"
    for name in ("config.json", "metrics.json", "checkpoint.npz", "roc.png", "run.log"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(f"the run's {name}")
    (run / "samples").mkdir()
    (run / "samples" / "round_001.png").write_text("G(z)")
    (run / "data" / "hospital_b").mkdir(parents=True)
    (run / "data" / "hospital_b" / "labels.csv").write_text("patient_id,label\n")
    (run / "notes.md").write_text("the user's notes")
    (run / "mine").mkdir()
    (run / "mine" / "metrics.json").write_text("the user's, in a subfolder")
    return run


class _Reached(Exception):
    """The stand-in for the simulation: the guard let the command through (the
    command reports it as the run's error, exit code 1, and keeps its log)."""


@pytest.fixture()
def no_simulation(monkeypatch):
    calls = []

    def stand_in(out, config, *args, **kwargs):
        calls.append((out, config))
        raise _Reached

    monkeypatch.setattr(simulate_module, "simulate", stand_in)
    return calls


def test_simulate_refuses_a_folder_holding_a_run(finished_run, capsys, no_simulation):
    before = tree(finished_run)
    assert main(["simulate", "--out", str(finished_run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {finished_run} holds a run (config.json, ")
    assert "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert tree(finished_run) == before and no_simulation == []


def test_overwrite_removes_only_the_runs_own_files(finished_run, no_simulation):
    assert main(["simulate", "--out", str(finished_run), "--overwrite"]) == 1
    left = tree(finished_run)
    assert sorted(left) == [
        "data/hospital_b/labels.csv",  # the run's input: kept
        "mine/metrics.json",
        "notes.md",
        "run.log",  # the new run's: the old one was removed
    ]
    assert "the run's run.log" not in (finished_run / "run.log").read_text()
    assert len(no_simulation) == 1


def test_overwrite_never_follows_a_link_out_of_the_run(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.png").write_text("someone else's")
    (elsewhere / "metrics.json").write_text("someone else's")
    (run / "config.json").write_text("{}")
    (run / "samples").symlink_to(elsewhere, target_is_directory=True)
    (run / "metrics.json").symlink_to(elsewhere / "metrics.json")
    before = tree(elsewhere)
    claim_run_dir(run, resume=False, overwrite=True)
    assert tree(elsewhere) == before
    assert not any(run.iterdir())


def test_resume_keeps_the_run_and_excludes_overwrite(finished_run):
    before = tree(finished_run)
    claim_run_dir(finished_run, resume=True, overwrite=False)
    assert tree(finished_run) == before
    with pytest.raises(RunDirError, match="exclude each other"):
        claim_run_dir(finished_run, resume=True, overwrite=True)
    assert tree(finished_run) == before


def test_a_folder_without_a_run_is_used_as_it_is(tmp_path, no_simulation):
    (tmp_path / "data").mkdir()  # e.g. sites written by `fedbigbigan phantoms`
    (tmp_path / "data" / "x").write_text("site")
    assert main(["simulate", "--out", str(tmp_path)]) == 1
    assert len(no_simulation) == 1
    assert sorted(tree(tmp_path)) == ["data/x", "run.log"]
    assert (tmp_path / "data" / "x").read_text() == "site"


def test_every_run_file_marks_a_run(tmp_path):
    for name in RUN_FILES:
        run = tmp_path / name.replace(".", "_")
        run.mkdir()
        (run / name).write_text("x")
        with pytest.raises(RunDirError, match=name):
            claim_run_dir(run, resume=False, overwrite=False)


def test_train_central_refuses_a_finished_run(tmp_path, capsys):
    (tmp_path / "model.npz").write_text("the trained model")
    before = tree(tmp_path)
    assert main(["train-central", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path} holds a run")
    assert tree(tmp_path) == before


# ---- run config values -------------------------------------------------------

NAN, INF = math.nan, math.inf
BAD_VALUES = [
    ("lr-eg", NAN),
    ("lr-d", INF),
    ("lr-d", -2e-4),
    ("lr-e-multiplier", 0.0),
    ("logit-lr", NAN),
    ("secagg-delta-clip", INF),
    ("secagg-delta-clip", NAN),
    ("secagg-delta-clip", 0.0),
    ("secagg-timeout", -1.0),
    ("secagg-timeout", 0),
    ("secagg-timeout", INF),
    ("secagg-reconstruction-threshold", 0.0),
    ("secagg-reconstruction-threshold", 1.5),
    ("secagg-reconstruction-threshold", -0.67),
    ("secagg-num-shares", 0),
    ("secagg-num-shares", -1.0),
    ("secagg-quantization-bits", 31),
    ("dp-clip", NAN),
    ("dp-noise-multiplier", -1.0),
    ("dp-noise-multiplier", INF),
    ("dp-delta", 1.0),
    ("head-ridge", NAN),
    ("fedprox-mu", INF),
    ("server-adam-lr", NAN),
    ("server-adam-tau", 0.0),
    ("server-avgm-momentum", 1.0),
    ("sim-client-cpus", 0.0),
    ("sim-client-gpus", NAN),
    ("split-val", NAN),
    ("ingest-window-width", NAN),
    ("ingest-window-center", INF),
    ("ingest-min-lung-fraction", NAN),
    ("seed", -1),
    ("gan-rounds", -1),
    ("batch-size", 1),
    ("local-epochs", 0),
    ("logit-steps", 0),
    # booleans where numbers belong, numbers where booleans or text belong
    ("gan-rounds", True),
    ("lr-eg", True),
    ("secagg-timeout", False),
    ("xla", 1),
    ("preset", 1),
    ("batch-size", 16.0),
    ("local-epochs", "3"),
    ("strategy", "scaffold"),
    ("secure-aggregation", "secagg"),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=lambda v: repr(v))
def test_each_bad_value_is_one_line_naming_key_value_and_range(key, value):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat({key: value})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{key} must be ")
    assert message.endswith(f"got {value!r}")
    if key in RANGES:
        assert str(RANGES[key]) in message  # the allowed range, spelled out


def test_every_range_accepts_the_default():
    RunConfig().validate()
    defaults = RunConfig().to_flat()
    assert set(RANGES) <= set(defaults)  # no range for a key that does not exist


def test_several_problems_are_all_named_one_per_line():
    flat = {"lr-eg": NAN, "secagg-timeout": -1.0, "gan-rounds": True, "nope": 1}
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat(flat)
    lines = str(err.value).splitlines()
    assert len(lines) == 4
    assert [line.split()[0] for line in lines] == [
        "lr-eg",
        "secagg-timeout",
        "gan-rounds",
        "run",  # run config key 'nope' is unknown
    ]


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("lr-eg=nan", "error: lr-eg must be a finite number > 0, got nan"),
        ("secagg-delta-clip=inf", "error: secagg-delta-clip must be a finite"),
        ("secagg-timeout=-5", "error: secagg-timeout must be a finite number > 0"),
        ("gan-rounds=true", "error: gan-rounds must be an integer >= 0, got True"),
    ],
)
def test_the_cli_stops_before_anything_starts(
    tmp_path, capsys, no_simulation, override, says
):
    out = tmp_path / "run"
    assert main(["simulate", "--out", str(out), "--run-config", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(says) and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and no_simulation == []


@pytest.mark.parametrize("value", ["0", "nan", "-0.3", "inf", "half"])
def test_a_bad_scale_is_refused_by_the_parser(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stop:
        main(["simulate", "--out", str(tmp_path / "run"), "--scale", value])
    assert stop.value.code == 2
    assert "--scale: must be a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---- sweeps ------------------------------------------------------------------


def test_a_sweep_checks_every_runs_config_before_the_first_run(tmp_path, no_simulation):
    from simulations.sweep import run_sweep

    sweep = tmp_path / "sweep.toml"
    sweep.write_text("seeds = [0, -1]\nscale = 0.1\n")  # the second seed is bad
    with pytest.raises(ConfigError, match="seed must be an integer in"):
        run_sweep(sweep, tmp_path / "out", RunConfig().to_flat())
    assert no_simulation == [] and not (tmp_path / "out").exists()


def test_a_sweep_does_not_mix_in_a_run_finished_under_another_config(
    tmp_path, no_simulation
):
    import json

    from simulations.sweep import run_sweep

    sweep = tmp_path / "sweep.toml"
    sweep.write_text("seeds = [0]\nscale = 0.1\n[run-config]\nlr-eg = 1e-4\n")
    run = tmp_path / "out" / "paper__fedavg__egd__s0"
    run.mkdir(parents=True)
    other = {**RunConfig().to_flat(), "lr-eg": 3e-4}  # finished with another rate
    (run / "config.json").write_text(json.dumps(other))
    (run / "metrics.json").write_text(json.dumps({"comparisons": {}}))
    with pytest.raises(RunDirError, match=r"another run config \(lr-eg differ"):
        run_sweep(sweep, tmp_path / "out", RunConfig().to_flat())
    assert no_simulation == []
