"""Differential privacy of a site's update, applied before SecAgg+ masks it.

DP-FedAvg at the level of sites (McMahan et al., 2018), in its distributed form:
each training site clips its update to L2 norm `clip` and adds Gaussian noise of
standard deviation `noise_multiplier * clip / sqrt(n_sites)`, so the SecAgg+ sum
carries noise of `noise_multiplier * clip` while no site's noise alone protects
it, and the server never sees an unnoised update. The sites' updates are then
averaged unweighted (each weighs 1), so one site moves the mean by at most
`clip / n_sites`. Every site takes part in every round (no subsampling); the
accountant composes one Gaussian mechanism per round (Renyi DP).

The guarantee covers the BigBiGAN rounds' weight updates and assumes every
site adds its share: a site that drops out leaves the sum with less noise.
"""

from __future__ import annotations

import math

import numpy as np


def clip_and_noise(
    arrays: list[np.ndarray],
    clip: float,
    noise_multiplier: float,
    n_sites: int,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], float]:
    """(noised arrays, the update's L2 norm before clipping).

    The rng must be unpredictable to the server (seeded from the OS, not from
    the run seed): noise the server could regenerate protects nothing.
    """
    norm = math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip / math.sqrt(max(n_sites, 1))
    out = [
        (a.astype(np.float64) * scale + rng.normal(0.0, std, a.shape)).astype(a.dtype)
        for a in arrays
    ]
    return out, norm


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon at `delta` after `rounds` Gaussian mechanisms of this noise
    multiplier (RDP accountant of `dp_accounting`); inf without noise."""
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    import dp_accounting
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant()
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))
