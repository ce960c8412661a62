"""Is the class signal in E's input? A linear read-out of simple features of
the very slices E receives, from a train-central run directory's study.

    python benchmarks/input_histogram_probe.py RUN_DIR [key=value ...]

Fits sklearn's standardised logistic regression on hospital A's training
slices (the run config's roster and split) and prints the patient AUC (mean of
a patient's slice scores, DeLong CI) on validation, test and the external site
for: a 32-bin histogram of E's input pixels, their mean and SD, and the
first-order radiomics baseline. `key=value` are run-config overrides, e.g.
`ingest-intensity=lung-window` (the run directory's ingest cache is reused
when it matches). A research check for issue 21, not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.config import RunConfig
from common.evaluation import radiomics
from common.evaluation.roc_stats import auc_ci, patient_scores
from common.model.dataset import SliceSet
from simulations.central import concat, pooled_data


def pixel_histogram(data: SliceSet, bins: int = 32) -> np.ndarray:
    flat = data.images[..., 0].reshape(len(data), -1)
    return np.stack(
        [np.histogram(r, bins=bins, range=(-1, 1))[0] / r.size for r in flat]
    )


def mean_sd(data: SliceSet) -> np.ndarray:
    flat = data.images[..., 0].reshape(len(data), -1)
    return np.stack([flat.mean(1), flat.std(1)], 1)


def first_order(data: SliceSet) -> np.ndarray:
    return radiomics.features(data.images, data.hu_range)


def main(run_dir: Path, overrides: list[str]) -> None:
    flat = {"sim-data-root": str(run_dir / "data"), "out-dir": str(run_dir)}
    flat.update(item.split("=", 1) for item in overrides)
    config = RunConfig.from_flat(flat)
    sites = pooled_data(config)
    training = [name for name, role in config.site_roster() if role == "train"]
    train = concat([sites[n]["train"] for n in training])
    evals = {s: concat([sites[n][s] for n in training]) for s in ("val", "test")}
    evals.update({n: d["external"] for n, d in sites.items() if "external" in d})
    for name, features in (
        ("pixel histogram", pixel_histogram),
        ("pixel mean + SD", mean_sd),
        ("first-order radiomics", first_order),
    ):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(features(train), train.labels)
        cells = []
        for split, data in evals.items():
            scores, labels = patient_scores(
                model.decision_function(features(data)), data.patient, data.labels
            )
            auc, low, high = auc_ci(scores, labels)
            cells.append(f"{split} {auc:.3f} [{low:.2f}, {high:.2f}] n={len(labels)}")
        print(f"{name:22s}", " | ".join(cells))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
