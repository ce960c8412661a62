"""Write a run directory a person can read: config, metrics, weights, ROC plot."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.evaluation.metrics import roc_from_histograms
from common.strict_json import revive_json, strict_json
from server.checkpointing import CHECKPOINT
from server.evaluation import SPLITS, pooled

HISTOGRAMS = "histograms.npz"
RECONSTRUCTIONS = "reconstructions.png"  # written by simulations only (shows slices)
PRIVACY_CURVE = "privacy_curve.json"  # written by `fedbigbigan privacy-curve`
RUN_LOG = "run.log"  # everything a simulated run's processes printed
# What a run writes into its directory (`simulate`, `flwr run`): `--overwrite`
# removes these, and nothing else of the folder. The sites' data (data/) is
# the run's input: it stays, and is reused when it fits.
RUN_FILES = (
    "config.json",
    "metrics.json",
    "global_weights.npz",
    HISTOGRAMS,
    "roc.png",
    "losses.png",
    CHECKPOINT,
    RECONSTRUCTIONS,
    "report.html",
    RUN_LOG,
)
RUN_FOLDERS = ("samples", "report", "ingest-cache", "tensorboard")
# What `train-central` writes into its directory.
CENTRAL_FILES = ("model.npz", "metrics.json", "losses.png")
CENTRAL_FOLDERS = ("recon", "ingest-cache")


class RunDirError(ValueError):
    """An output folder holds a run that this command would overwrite."""


def claim_run_dir(
    out: Path,
    *,
    resume: bool,
    overwrite: bool,
    files: tuple[str, ...] = RUN_FILES,
    folders: tuple[str, ...] = RUN_FOLDERS,
) -> None:
    """Make sure starting a run in `out` loses nothing by accident.

    A folder holding a run (finished or interrupted) is refused unless the run
    is resumed or `overwrite` is given; `overwrite` removes the run's own files
    and folders (`files`, `folders`, and their temporary names) only.
    """
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: pick one")
    present = [name for name in files if (out / name).is_file()]
    if not present or resume:
        return
    if not overwrite:
        raise RunDirError(
            f"{out} holds a run ({', '.join(present)}): give --resume to continue "
            "it, --overwrite to replace it, or a new --out"
        )
    for name in files:
        for path in (out / name, out / f"{name}.tmp"):
            if path.is_symlink() or path.is_file():
                path.unlink()
    for name in folders:
        path = out / name
        if path.is_symlink():
            path.unlink()  # the link only, never what it points to
        elif path.is_dir():
            shutil.rmtree(path)


def pooled_histograms(site_hist: dict, coarse: dict | None = None) -> dict:
    """Per-class score counts per split and level, keyed "split/level/pos|neg",
    pooled over sites, so no training site's own counts are kept. A split in
    `coarse` (the external site's, {split: {"level/pos": counts}}) has only its
    coarse bins, and "split/coarse" marks it."""
    arrays = {}
    for split in SPLITS:
        for level in ("patient", "slice"):
            pos, neg = pooled(site_hist, split, level)
            arrays[f"{split}/{level}/pos"], arrays[f"{split}/{level}/neg"] = pos, neg
    for split, counts in (coarse or {}).items():
        arrays |= {f"{split}/{key}": value for key, value in counts.items()}
        arrays[f"{split}/coarse"] = np.array(True)
    return arrays


def save_pooled_histograms(path: Path, arrays: dict) -> None:
    """`pooled_histograms` as the run's histograms.npz, for the report's ROC curves."""
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def update_metrics(run_dir: Path, **items) -> None:
    """Add top-level entries to RUN_DIR/metrics.json (rewritten atomically)."""
    path = Path(run_dir) / "metrics.json"
    metrics = revive_json(json.loads(path.read_text())) | items
    _atomic_write(
        path,
        lambda p: p.write_text(
            json.dumps(strict_json(metrics), indent=2, allow_nan=False)
        ),
    )


def write_config(out: Path, config: RunConfig) -> None:
    """RUN_DIR/config.json: written when a run starts (so an interrupted run can
    be resumed with its own config) and again with the results."""
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        out / "config.json",
        lambda p: p.write_text(json.dumps(config.to_flat(), indent=2)),
    )


def write_run(
    out: Path,
    config: RunConfig,
    metrics: dict,
    weights: list,
    coef: np.ndarray,
    site_hist: dict,
    head_scale: tuple[np.ndarray, np.ndarray] | None = None,
    logit: np.ndarray | None = None,
    coarse: dict | None = None,
    heads: dict[str, np.ndarray] | None = None,
) -> None:
    """Everything a run leaves: `heads` are every feature kind's heads by name
    (`common.evaluation.feature_kinds`), kept as `head_<name>` beside the main
    `head`."""
    write_config(out, config)
    _atomic_write(
        out / "metrics.json",
        lambda p: p.write_text(
            json.dumps(strict_json(metrics), indent=2, allow_nan=False)
        ),
    )

    def save_weights(p: Path) -> None:
        with p.open("wb") as handle:
            scale = {}
            if head_scale is not None:  # the standardisation the head was fitted in
                scale = {"head_mean": head_scale[0], "head_std": head_scale[1]}
            if logit is not None:  # the federated logistic head, for comparison
                scale["logit_head"] = logit
            for name, head in (heads or {}).items():
                scale[f"head_{name.replace('-', '_')}"] = head
            np.savez(handle, *weights, head=coef, **scale)

    _atomic_write(out / "global_weights.npz", save_weights)
    hists = pooled_histograms(site_hist, coarse)
    _atomic_write(out / HISTOGRAMS, lambda p: save_pooled_histograms(p, hists))
    _atomic_write(out / "roc.png", lambda p: _plot_roc(p, metrics, hists))
    if metrics.get("rounds") and "d_loss" in metrics["rounds"][0]:  # not under DP
        _atomic_write(out / "losses.png", lambda p: _plot_losses(p, metrics["rounds"]))


def _plot_losses(path: Path, rounds: list[dict]) -> None:
    """D, E and G losses per round, averaged over the training sites (Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["round"] for r in rounds]
    for key, label in (("d_loss", "D"), ("e_loss", "E"), ("g_loss", "G")):
        ax.plot(x, [r[key] for r in rounds], marker="o", label=label)
    ax.set(xlabel="round", ylabel="loss (mean over sites)", title="BigBiGAN losses")
    ax.legend()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _plot_roc(path: Path, metrics: dict, hists: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for split in SPLITS:
        key = f"{split}/{metrics['level']}"
        fpr, tpr, _ = roc_from_histograms(hists[f"{key}/pos"], hists[f"{key}/neg"])
        auc = metrics["splits"][split]["auc"]
        ax.plot(fpr, tpr, label=f"{split} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title=f"ROC, {metrics['level']} level",
    )
    ax.legend(loc="lower right")
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
