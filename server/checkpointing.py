"""The ServerApp's state after each completed BigBiGAN round, for `resume`.

One file, RUN_DIR/checkpoint.npz, rewritten after every round (written to a
temporary name, then renamed: a crash leaves the previous round's file whole).
It holds the global weights, the round reached, the per-round history, the
server optimiser's state (FedAvgM's velocities, FedAdam's moments; none for
FedAvg) and a hash of the run config, so a resumed run continues at the next
round and refuses a checkpoint written under another configuration.

Nothing else needs saving: each round starts the sites' optimisers afresh (see
`BigBiGAN.train_epochs`), so this is the whole server state.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import RunConfig

CHECKPOINT = "checkpoint.npz"
# keys that may differ between the interrupted and the resumed run: where
# things are, and the resume request itself
VOLATILE_KEYS = ("out-dir", "sim-data-root", "resume")


@dataclass
class ServerCheckpoint:
    round: int  # the last completed BigBiGAN round
    weights: list[np.ndarray]
    history: list[dict]
    config_hash: str
    token: str  # names the sites' kept parts (federated-parts "eg"/"e") of this run
    optimizer_state: list[np.ndarray] = field(default_factory=list)
    # the run config it was written under (volatile keys left out), so a
    # refused resume can say which keys differ
    settings: dict = field(default_factory=dict)


def stable_config(config: RunConfig) -> dict:
    """The flat run config without its volatile keys: what a resume must match."""
    flat = {k: v for k, v in config.to_flat().items() if k not in VOLATILE_KEYS}
    # runs checkpointed before the key existed used SecAgg+: the default adds
    # nothing to the hash, so they still resume
    if flat.get("secure-aggregation") == "secaggplus":
        del flat["secure-aggregation"]
    if flat.get("transport") == "float32":  # likewise, from before transport
        del flat["transport"]
    if flat.get("max-site-weight") == 0:  # likewise, from before the cap
        del flat["max-site-weight"]
    if flat.get("roster-file") == "":  # likewise, from before the roster
        del flat["roster-file"]
    return flat


def config_hash(config: RunConfig) -> str:
    """SHA-256 of the run config without its volatile keys."""
    flat = stable_config(config)
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def save_checkpoint(run_dir: Path, checkpoint: ServerCheckpoint) -> Path:
    """Write RUN_DIR/checkpoint.npz atomically; return its path."""
    path = Path(run_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as handle:
            np.savez(
                handle,
                *checkpoint.weights,
                **{f"opt_{i}": a for i, a in enumerate(checkpoint.optimizer_state)},
                round=np.int64(checkpoint.round),
                history=np.array(json.dumps(checkpoint.history)),
                config_hash=np.array(checkpoint.config_hash),
                token=np.array(checkpoint.token),
                settings=np.array(json.dumps(checkpoint.settings, sort_keys=True)),
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left over if writing failed
    return path


def load_checkpoint(run_dir: Path, config: RunConfig) -> ServerCheckpoint:
    """The checkpoint of RUN_DIR, checked against `config`.

    Raises FileNotFoundError when there is none and ValueError when it was
    written under another configuration (naming how to start afresh instead).
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no checkpoint to resume from (a run writes one after each "
            "completed BigBiGAN round)"
        )
    with np.load(path) as data:
        n_arrays = sum(1 for k in data.files if k.startswith("arr_"))
        n_state = sum(1 for k in data.files if k.startswith("opt_"))
        checkpoint = ServerCheckpoint(
            round=int(data["round"]),
            weights=[data[f"arr_{i}"] for i in range(n_arrays)],
            history=json.loads(str(data["history"])),
            config_hash=str(data["config_hash"]),
            token=str(data["token"]),
            optimizer_state=[data[f"opt_{i}"] for i in range(n_state)],
            settings=json.loads(str(data["settings"])) if "settings" in data else {},
        )
    if checkpoint.config_hash != config_hash(config):
        raise ValueError(
            f"{path} was written under another run configuration"
            f"{_differences(checkpoint.settings, stable_config(config))}; resume "
            "with the same run config (only out-dir and sim-data-root may "
            "change), or start a new run without resume"
        )
    return checkpoint


def _differences(saved: dict, now: dict) -> str:
    """' (key: checkpoint X, now Y; ...)', or '' for a checkpoint without settings."""
    if not saved:
        return ""
    keys = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    missing = "(not set)"
    return (
        " ("
        + "; ".join(
            f"{k}: checkpoint {saved.get(k, missing)!r}, now {now.get(k, missing)!r}"
            for k in keys
        )
        + ")"
    )
