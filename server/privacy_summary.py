"""What a run spent in privacy and in bytes, for metrics.json and the report."""

from __future__ import annotations

import math

import numpy as np

from common.config import RunConfig
from common.privacy.dp import epsilon


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
# (uint16 with the float16 transport)
UPLOAD_BYTES = {"secaggplus": 8, "fedbigbigan": 4}
UPLOAD_DTYPES = {"secaggplus": "int64", "fedbigbigan": "uint32"}


def payload_bytes(
    federated: list[np.ndarray],
    protocol: str = "secaggplus",
    transport: str = "float32",
    wire: list[dict] | None = None,
) -> dict:
    """Payload bytes per site and BigBiGAN round for these federated arrays
    under the run's secure aggregation (`secure-aggregation`) and `transport`.

    With "float32" the server sends them as float32; a site uploads one masked
    value per federated value plus its weight: SecAgg+ as int64 (twice the
    float32 size), ours as uint32 (the float32 size). With "float16" both
    halve (float16 down, uint16 up) from the second BigBiGAN round on (the
    first goes in 32-bit lanes, server.transport). Protocol messages (keys,
    shares, array headers) come on top and do not grow with the model.

    `wire` (ours only): the measured rounds (server_app.wire_figures); the
    BigBiGAN rounds' figures and their means go under "measured".
    """
    values = int(sum(a.size for a in federated))
    half = transport == "float16"
    out = {
        "protocol": protocol,
        "transport": transport,
        "federated_values": values,
        "down_bytes": (2 if half else 4) * values,
        "down_dtype": "float16" if half else "float32",
        "up_bytes": (2 if half else UPLOAD_BYTES[protocol]) * (values + 1),
        "up_dtype": "uint16" if half else UPLOAD_DTYPES[protocol],
    }
    gan = [w for w in wire or [] if w["phase"] == "gan"]
    if gan:
        out["measured"] = {
            "rounds": gan,
            "mean_down_ratio": float(np.mean([w["down_ratio"] for w in gan])),
            "mean_up_ratio": float(np.mean([w["up_ratio"] for w in gan])),
        }
    return out
