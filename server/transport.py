"""The float16 transport of the BigBiGAN rounds (run config `transport`).

Down: the server keeps its float32 master weights and sends them cast to
float16. A site trains from what it received and uploads its delta from it, so
the cast's rounding never accumulates: master += the securely averaged delta.

Up: the deltas travel in 16-bit lanes (client.secure_agg_mod), which leave a
site only 2**(15 - ceil(log2(n + 1))) levels per value (8192 for 2 sites, 2048
for 10): a fixed clip of 4 would make the step 5e-4, the size of a whole
round's change of a weight. So each array gets its own clip, public and
derived from aggregates only:

- round 1 (and the first round after a resume) goes in 32-bit lanes with
  `secagg-delta-clip`: there is no aggregate yet, and a guessed first bound
  (from learning rates, or the weights' sizes) would not hold for BatchNorm's
  running statistics, which no optimiser bounds;
- round t > 1 clips array k at MARGIN x max|mean delta_k of round t - 1|,
  floored at FLOOR and capped at `secagg-delta-clip`. The mean delta is what
  the server learns anyway, so the clips reveal nothing new about a site. A
  site's own change can exceed the mean's (sites pulling apart) and deltas
  shrink or grow between rounds: MARGIN covers that, and what it does not
  cover is clipped, counted (each site's reply says how many values), logged
  and written to the round's history; the next round's clip follows the new
  mean.

Stochastic rounding keeps each site's value unbiased; the error of the mean is
below one step clip_k / levels per array (weights <= 1 of the largest site).
"""

from __future__ import annotations

import numpy as np

MARGIN = 4.0
# the smallest clip: below float16's spacing near typical weights (~3e-5 at
# 0.05), so an array that stood still one round may still move a little
FLOOR = 1e-6


def downcast(weights: list[np.ndarray]) -> list[np.ndarray]:
    """The master weights as float16 for the download; refuses values that
    float16 cannot hold (|x| > 65504) instead of sending infinities."""
    out = []
    for i, w in enumerate(weights):
        with np.errstate(over="ignore"):  # checked below, named
            half = np.asarray(w).astype(np.float16)
        if not np.isfinite(half).all():
            raise ValueError(
                f"federated array {i} holds values beyond float16's range "
                f"(max |x| {float(np.abs(w).max()):.3g}): use transport = 'float32'"
            )
        out.append(half)
    return out


def next_clips(mean_delta: list[np.ndarray], cap: float) -> list[float]:
    """Each array's public clip for the next round's 16-bit lanes, from this
    round's securely averaged delta (see the module docstring)."""
    return [
        float(min(cap, max(FLOOR, MARGIN * float(np.abs(d).max(initial=0.0)))))
        for d in mean_delta
    ]


def lane_bits(clips: list[float] | None) -> int:
    """16-bit lanes once there are clips from an aggregate, else 32."""
    return 16 if clips else 32
