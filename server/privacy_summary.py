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
        "statistics and the evaluation counts are secure sums without DP noise",
    }


# bytes per uploaded masked value: SecAgg+ (Flower 1.42) sends int64, ours uint32
UPLOAD_BYTES = {"secaggplus": 8, "fedbigbigan": 4}
UPLOAD_DTYPES = {"secaggplus": "int64", "fedbigbigan": "uint32"}


def payload_bytes(federated: list[np.ndarray], protocol: str = "secaggplus") -> dict:
    """Payload bytes per site and BigBiGAN round for these federated arrays
    under the run's secure aggregation (`secure-aggregation`).

    The server sends them as float32. A site uploads one masked value per
    federated value plus its weight: SecAgg+ as int64 (twice the float32
    size), ours as uint32 (the float32 size). Protocol messages (keys,
    shares, array headers) come on top and do not grow with the model.
    """
    values = int(sum(a.size for a in federated))
    return {
        "protocol": protocol,
        "federated_values": values,
        "down_bytes": 4 * values,
        "up_bytes": UPLOAD_BYTES[protocol] * (values + 1),
        "up_dtype": UPLOAD_DTYPES[protocol],
    }
