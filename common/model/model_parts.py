"""Which of the model's weight arrays leave a site: E, G and D by part.

`BigBiGAN.variables` lists E's, then G's, then D's arrays; `federated-parts`
("egd", "eg" or "e") picks the parts that are averaged across sites; the others
stay at each site (see client/local_parts.py). Under the "fedbn" strategy every
BatchNorm layer's parameters and statistics stay at the site too (FedBN, Li et
al. 2021); G's conditional BatchNorm keeps its statistics home, while its gain
and offset projections, dense layers on z, are federated.
"""

from __future__ import annotations

import numpy as np

from common.config import FEDERATED_PARTS


def part_ranges(model) -> dict[str, range]:
    """Index range of each part's arrays in `model.get_weights()`."""
    n_e, n_g = len(model.encoder.weights), len(model.generator.weights)
    n_d = len(model.discriminator.weights)
    return {
        "e": range(0, n_e),
        "g": range(n_e, n_e + n_g),
        "d": range(n_e + n_g, n_e + n_g + n_d),
    }


BATCHNORM_ARRAYS = ("gamma", "beta", "moving_mean", "moving_variance")


def is_batchnorm(path: str) -> bool:
    """A BatchNorm layer's parameter or statistic (Keras names them so)."""
    return path.rsplit("/", 1)[-1] in BATCHNORM_ARRAYS


def federated_indices(model, parts: str, strategy: str = "fedavg") -> list[int]:
    """Indices of the arrays that are federated under `parts` and `strategy`."""
    ranges = part_ranges(model)
    indices = [i for part in FEDERATED_PARTS[parts] for i in ranges[part]]
    if strategy == "fedbn":
        paths = [v.path for v in model.variables]
        indices = [i for i in indices if not is_batchnorm(paths[i])]
    return indices


def local_indices(model, parts: str, strategy: str = "fedavg") -> list[int]:
    """Indices of the arrays that stay at the site under `parts` and `strategy`."""
    shared = set(federated_indices(model, parts, strategy))
    return [i for i in range(len(model.variables)) if i not in shared]


def select(arrays: list[np.ndarray], indices: list[int]) -> list[np.ndarray]:
    return [arrays[i] for i in indices]


def merge(
    full: list[np.ndarray], indices: list[int], values: list[np.ndarray]
) -> list[np.ndarray]:
    """`full` with the arrays at `indices` replaced by `values`."""
    if len(indices) != len(values):
        raise ValueError(f"expected {len(indices)} arrays, got {len(values)}")
    out = list(full)
    for i, value in zip(indices, values, strict=True):
        out[i] = value
    return out


# BatchNorm's running variance must stay positive; noise (DP) or quantisation
# (SecAgg+) can push an average below zero, and sqrt(negative) is NaN
VARIANCE_FLOOR = 1e-3


def floor_variances(model, indices: list[int], arrays: list[np.ndarray]) -> list:
    """`arrays` (the model's arrays at `indices`) with every BatchNorm running
    variance floored at VARIANCE_FLOOR: post-processing, which costs no privacy."""
    paths = [model.variables[i].path for i in indices]
    return [
        np.maximum(a, VARIANCE_FLOOR).astype(a.dtype)
        if path.endswith("moving_variance")
        else a
        for path, a in zip(paths, arrays, strict=True)
    ]
