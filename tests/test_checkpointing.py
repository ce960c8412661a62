"""The server's per-round checkpoint: atomic, exact, and bound to its config."""

import dataclasses

import numpy as np
import pytest

from common.config import RunConfig
from server.checkpointing import (
    CHECKPOINT,
    ServerCheckpoint,
    config_hash,
    load_checkpoint,
    save_checkpoint,
    stable_config,
)


def _checkpoint(config: RunConfig, rnd: int = 1) -> ServerCheckpoint:
    rng = np.random.default_rng(rnd)
    weights = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=7)]
    history = [{"round": r, "d_loss": 1.5 / r} for r in range(1, rnd + 1)]
    return ServerCheckpoint(
        rnd,
        weights,
        history,
        config_hash(config),
        "0123abcd",
        settings=stable_config(config),
    )


def test_round_trip_is_exact(tmp_path):
    config = RunConfig()
    saved = _checkpoint(config, 2)
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path, config)
    assert loaded.round == 2 and loaded.history == saved.history
    assert loaded.token == saved.token
    for a, b in zip(loaded.weights, saved.weights, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_the_server_optimisers_state_round_trips(tmp_path):
    config = RunConfig(strategy="fedadam")
    saved = _checkpoint(config, 1)
    saved.optimizer_state = [np.full((3, 4), 0.25, np.float32), np.arange(7.0)]
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path, config)
    assert len(loaded.weights) == 2 and len(loaded.optimizer_state) == 2
    for a, b in zip(loaded.optimizer_state, saved.optimizer_state, strict=True):
        assert np.array_equal(a, b)
    # FedAvg has none: an empty state stays empty
    save_checkpoint(tmp_path, _checkpoint(config, 2))
    assert load_checkpoint(tmp_path, config).optimizer_state == []


def test_a_different_config_is_refused_but_paths_may_move(tmp_path):
    config = RunConfig()
    save_checkpoint(tmp_path, _checkpoint(config))
    moved = dataclasses.replace(
        config, out_dir="/elsewhere", sim_data_root="/data", resume=str(tmp_path)
    )
    assert load_checkpoint(tmp_path, moved).round == 1
    other = dataclasses.replace(config, gan_rounds=config.gan_rounds + 1, seed=7)
    with pytest.raises(ValueError, match="another run configuration") as refused:
        load_checkpoint(tmp_path, other)
    # the coordinator is told which keys differ, with both values
    n = config.gan_rounds
    assert f"gan-rounds: checkpoint {n}, now {n + 1}" in str(refused.value)
    assert f"seed: checkpoint {config.seed}, now 7" in str(refused.value)
    assert "out-dir: checkpoint" not in str(refused.value)  # volatile: may move


def test_no_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=CHECKPOINT):
        load_checkpoint(tmp_path, RunConfig())


def test_a_crash_while_writing_leaves_the_previous_round_whole(tmp_path, monkeypatch):
    config = RunConfig()
    save_checkpoint(tmp_path, _checkpoint(config, 1))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, _checkpoint(config, 2))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path, config).round == 1
    assert not list(tmp_path.glob("*.tmp"))
