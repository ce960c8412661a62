"""Save and restore a BigBiGAN bit-exactly, never leaving a half-written file.

A model file is an .npz with one array per variable (keyed by its Keras path) and
the preset name, so a file from another preset or code version fails loudly.
A run directory (config.json + global_weights.npz) loads the same way.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from common.config import DeviceConfig, get_preset

PRESET_KEY = "__preset__"
log = logging.getLogger(__name__)


def initial_model(config):
    """The run's starting model: seeded init, E warm-started from `hub-module`."""
    from common.model.gan_training import BigBiGAN

    model = BigBiGAN(config.model, seed=config.seed, devices=config.devices)
    if config.hub_module:
        from common.model.hub import warm_start_encoder

        report = warm_start_encoder(model.encoder, config.hub_module)
        log.info("warm start from %s: %s", config.hub_module, report.summary())
    return model


def save_model(model, path: Path) -> Path:
    """Write every variable of `model` to `path` (.npz) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {v.path: np.asarray(v.numpy()) for v in model.variables}
    arrays[PRESET_KEY] = np.array(model.preset.name)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)
    return path


def load_model(path: Path, devices: DeviceConfig | None = None, seed: int = 0):
    """A BigBiGAN from a model file or a run directory, weights restored exactly."""
    from common.model.gan_training import BigBiGAN

    path = Path(path)
    if path.is_dir():
        return _load_run_dir(path, devices, seed)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model file or run directory here")
    with np.load(path) as data:
        if PRESET_KEY not in data:
            raise ValueError(f"{path}: not a fedbigbigan model file (no preset)")
        model = BigBiGAN(get_preset(str(data[PRESET_KEY])), seed, devices)
        names = [v.path for v in model.variables]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(
                f"{path}: {len(missing)} variables missing, e.g. {missing[:3]}"
            )
        model.set_weights([data[n] for n in names])
    return model


def _load_run_dir(run: Path, devices: DeviceConfig | None, seed: int):
    from common.model.gan_training import BigBiGAN

    config_file, weights_file = run / "config.json", run / "global_weights.npz"
    if not (config_file.is_file() and weights_file.is_file()):
        raise FileNotFoundError(
            f"{run}: a run directory needs config.json and global_weights.npz"
        )
    preset = json.loads(config_file.read_text())["preset"]
    model = BigBiGAN(get_preset(preset), seed, devices)
    with np.load(weights_file) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(model.variables))]
    model.set_weights(arrays)
    return model


def load_encoder(run: Path):
    """E alone from a run directory (the first arrays of global_weights.npz, as
    `BigBiGAN.variables` lists E first): all that scoring needs, built in a
    fraction of the full model's time."""
    from common.model.bigbigan import build_encoder

    run = Path(run)
    config_file, weights_file = run / "config.json", run / "global_weights.npz"
    if not (config_file.is_file() and weights_file.is_file()):
        raise FileNotFoundError(
            f"{run}: a run directory needs config.json and global_weights.npz"
        )
    encoder = build_encoder(get_preset(json.loads(config_file.read_text())["preset"]))
    with np.load(weights_file) as data:
        for i, variable in enumerate(encoder.weights):
            variable.assign(data[f"arr_{i}"])
    return encoder


def encode_z_mean(encoder, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """z_mean of `images` through a bare encoder, batch by batch (float64)."""
    out = [
        np.asarray(encoder(images[i : i + batch], training=False)["z_mean"], np.float64)
        for i in range(0, len(images), batch)
    ]
    return (
        np.concatenate(out)
        if out
        else np.zeros((0, encoder.output["z_mean"].shape[-1]))
    )
