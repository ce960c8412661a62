"""`fedbigbigan privacy-audit`: does the global generator reproduce this site's
training slices? Run at a site, on its own data; only the summary leaves it.

For each sample G(z) the audit finds the nearest training slice, in pixel space
(at G's resolution) and in the encoder's feature space (z_mean), and compares
those distances with the same distances for the site's held-out slices (its
validation and test patients, which the model never trained on). A sample much
closer to a training slice than real unseen slices ever come (by default: under
half the 5th percentile of the held-out distances) is flagged as a likely copy.
The summary holds distances, thresholds and flagged sample numbers; no slice,
no patient id, no per-patient value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.config import FEDERATED_PARTS, RunConfig

QUANTILES = (0.0, 0.05, 0.5, 0.95)


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """RMS distance (per value) from each query row to its nearest reference row."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = reference.reshape(len(reference), -1).astype(np.float64)
    r_sq = (r**2).sum(axis=1)
    out = np.empty(len(q))
    for start in range(0, len(q), 256):  # bounded memory for big sites
        block = q[start : start + 256]
        d2 = (block**2).sum(axis=1)[:, None] + r_sq[None, :] - 2.0 * block @ r.T
        out[start : start + 256] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out / np.sqrt(q.shape[1])


def compare(
    samples: np.ndarray,
    train: np.ndarray,
    heldout: np.ndarray,
    ratio: float = 0.5,
    quantile: float = 0.05,
) -> dict:
    """Nearest-training distances of samples vs of held-out real rows, one space."""
    to_train = nearest_distances(samples, train)
    real = nearest_distances(heldout, train)
    threshold = ratio * float(np.quantile(real, quantile))
    flagged = np.flatnonzero(to_train < threshold)
    return {
        "samples_to_train": _quantiles(to_train),
        "heldout_to_train": _quantiles(real),
        "threshold": threshold,
        "flagged": flagged.tolist(),
    }


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"q{round(100 * q):02d}": float(np.quantile(values, q)) for q in QUANTILES}


def audit(
    model, train_images: np.ndarray, heldout_images: np.ndarray, samples: np.ndarray
) -> dict:
    """The audit of `samples` (G's outputs, [n, g, g, 3] in [-1, 1]) against a
    site's training and held-out slices (E's input size), in both spaces."""
    import tensorflow as tf

    from common.model.bigbigan import downsample_for_d

    def small(images):  # real slices at G's resolution
        return np.asarray(downsample_for_d(images, model.preset))

    def features(images):  # back up to E's input size, as G's samples must be
        size = model.preset.image_size
        return model.encode(
            tf.image.resize(images, (size, size), method="nearest").numpy()
        )

    train, heldout = small(train_images), small(heldout_images)
    report = {
        "n_samples": len(samples),
        "n_train_slices": len(train_images),
        "n_heldout_slices": len(heldout_images),
        "pixel": compare(samples[..., 0], train[..., 0], heldout[..., 0]),
        # real slices take the same way down and up as samples, so a copy of a
        # training slice is a copy in this space too
        "feature": compare(features(samples), features(train), features(heldout)),
    }
    report["flagged"] = sorted(set(report["pixel"]["flagged"]))
    report["verdict"] = (
        f"{len(report['flagged'])} of {len(samples)} samples are closer to a "
        "training slice (in pixels) than half the 5th percentile of held-out "
        "slices' distances: inspect them at the site"
        if report["flagged"]
        else "no sample is closer to a training slice than real unseen slices come"
    )
    return report


def audit_site(
    run_dir: Path, site_dir: Path, n_samples: int = 256, seed: int = 0
) -> dict:
    """Audit a run's global G against the site folder `site_dir` (with its
    labels.csv), split into patients as the run split them."""
    from client.site import Site, site_data
    from common.model.adabn import adapt_batchnorm
    from common.model.checkpoint import load_model

    run_dir, site_dir = Path(run_dir), Path(site_dir)
    config = RunConfig.from_flat(json.loads((run_dir / "config.json").read_text()))
    if "g" not in FEDERATED_PARTS[config.federated_parts]:
        raise ValueError(
            f"{run_dir}: federated-parts = {config.federated_parts!r}: G never left "
            "the sites, so there is no global generator to audit"
        )
    model = load_model(run_dir, devices=config.devices, seed=config.seed)
    data = site_data(Site(site_dir.name, site_dir, "train"), config)
    heldout = np.concatenate([data["val"].images, data["test"].images])
    z = np.random.default_rng(seed).standard_normal((n_samples, model.preset.z_dim))
    z = z.astype(np.float32)
    if config.strategy == "fedbn":
        # the global weights carry no trained BatchNorm statistics: G's are
        # estimated on its own samples (what anyone holding the shared weights
        # could do), E's on this site's slices
        adapt_batchnorm(model.generator, z)
        model.adapt_batchnorm(np.concatenate([data["train"].images, heldout]))
    samples = np.asarray(model.generator(z, training=False))
    return audit(model, data["train"].images, heldout, samples)
