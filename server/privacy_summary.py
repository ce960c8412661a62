"""What a run spent in privacy and in bytes, for metrics.json and the report."""

from __future__ import annotations

import math

import numpy as np

from common.config import RunConfig
from common.dp import epsilon


def dp_summary(config: RunConfig, gan_rounds: int) -> dict:
    """The run's DP setting and its (epsilon, delta) over the BigBiGAN rounds;
    epsilon is infinite when DP is off (no guarantee, not no leak)."""
    on = config.dp_noise_multiplier > 0
    return {
        "on": on,
        "noise_multiplier": config.dp_noise_multiplier,
        "clip": config.dp_clip,
        "delta": config.dp_delta,
        "rounds": gan_rounds,
        "epsilon": epsilon(config.dp_noise_multiplier, gan_rounds, config.dp_delta)
        if on
        else math.inf,
        "scope": "site-level, BigBiGAN weight updates; the linear head's pooled "
        "statistics and the evaluation counts are SecAgg+ sums without DP noise",
    }


def payload_bytes(federated: list[np.ndarray]) -> dict:
    """Payload bytes per site and BigBiGAN round for these federated arrays.

    The server sends them as float32; SecAgg+ uploads the masked update as
    int64 (Flower 1.42), twice the float32 size. Protocol messages (keys,
    shares) come on top and do not grow with the model.
    """
    values = int(sum(a.size for a in federated))
    return {
        "federated_values": values,
        "down_bytes": 4 * values,
        "up_bytes": 8 * values,
    }
