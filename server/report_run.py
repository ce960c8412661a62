"""What `fedbigbigan report` reads from a run directory: its config,
metrics, pooled histograms, samples and reconstructions, and each split's results."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.evaluation import SPLITS
from server.run_dir import HISTOGRAMS, RECONSTRUCTIONS, revive_json

SPLIT_TITLES = {
    "train": "Training",
    "val": "Validation",
    "test": "Test",
    "external": "External site",
}


@dataclass
class RunContents:
    """What a run directory holds, loaded once."""

    path: Path
    config: dict
    metrics: dict
    histograms: dict[str, np.ndarray] | None
    samples: list[Path]
    reconstructions: Path | None  # real slices and G(E(x)): simulations only


def load_run(run_dir: Path) -> RunContents:
    """Read config.json, metrics.json, histograms.npz and samples/ of a run."""
    run_dir = Path(run_dir)
    for name in ("config.json", "metrics.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir / name}: missing; is {run_dir} a run directory "
                "written by `fedbigbigan simulate` or the ServerApp?"
            )
    hist_path = run_dir / HISTOGRAMS
    histograms = None
    if hist_path.is_file():
        with np.load(hist_path) as npz:
            histograms = {k: npz[k] for k in npz.files}
    return RunContents(
        path=run_dir,
        config=json.loads((run_dir / "config.json").read_text()),
        metrics=revive_json(json.loads((run_dir / "metrics.json").read_text())),
        histograms=histograms,
        samples=sorted((run_dir / "samples").glob("round_*.png")),
        reconstructions=(
            run_dir / RECONSTRUCTIONS if (run_dir / RECONSTRUCTIONS).is_file() else None
        ),
    )


def histogram(run: RunContents, split: str, level: str) -> tuple | None:
    """Pooled (pos, neg) counts, or None when the run kept no histograms."""
    key = f"{split}/{level}"
    if run.histograms is None or f"{key}/pos" not in run.histograms:
        return None
    return run.histograms[f"{key}/pos"], run.histograms[f"{key}/neg"]


def is_coarse(run: RunContents, split: str) -> bool:
    """True when the split's counts are a lone site's coarse bins (the external
    site releases no fine histogram), so its curve is drawn as such."""
    return run.histograms is not None and f"{split}/coarse" in run.histograms


def split_results(run: RunContents) -> dict[str, dict]:
    """metrics.json per split, with the class sizes the tables show."""
    out = {}
    for split in SPLITS:
        m = dict(run.metrics["splits"].get(split, {}))
        counts = histogram(run, split, run.metrics["level"])
        if counts is not None:
            m["n_pos"], m["n_neg"] = int(counts[0].sum()), int(counts[1].sum())
        elif "tp" in m:
            m["n_pos"], m["n_neg"] = m["tp"] + m["fn"], m["tn"] + m["fp"]
        out[split] = m
    return out
