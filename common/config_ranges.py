"""The numeric run config keys and the ranges they accept (Range, RANGES)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """The numbers a run config key accepts: finite, within these bounds."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False
    integer: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (
            value < self.low or (self.low_open and value == self.low)
        ):
            return False
        return self.high is None or not (
            value > self.high or (self.high_open and value == self.high)
        )

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return kind


def _at_least(low: float, integer: bool = False) -> Range:
    return Range(low, integer=integer)


_POSITIVE = Range(0, low_open=True)
_NON_NEGATIVE = Range(0)
_FRACTION = Range(0, 1, low_open=True, high_open=True)  # (0, 1)
_SHARE = Range(0, 1, low_open=True)  # (0, 1]
_RATE = Range(0, 1, high_open=True)  # [0, 1)

# Every numeric run config key and what it accepts (flat names). A value out
# of its range stops the run before anything starts, naming key and range.
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1, integer=True),
    "gan-rounds": _at_least(0, integer=True),
    "head-ridge": _NON_NEGATIVE,
    "logit-rounds": _at_least(0, integer=True),
    "logit-steps": _at_least(1, integer=True),
    "logit-lr": _POSITIVE,
    "local-epochs": _at_least(1, integer=True),
    "batch-size": _at_least(2, integer=True),
    "lr-d": _POSITIVE,
    "lr-eg": _POSITIVE,
    "lr-e-multiplier": _POSITIVE,
    "d-steps": _at_least(1, integer=True),
    "lr-halve-every": _at_least(0, integer=True),
    "max-slices-per-patient": _at_least(0, integer=True),
    "min-patients-per-class": _at_least(1, integer=True),
    "fedprox-mu": _NON_NEGATIVE,
    "aux-reconstruction": _NON_NEGATIVE,
    "aux-latent": _NON_NEGATIVE,
    "server-avgm-lr": _POSITIVE,
    "server-avgm-momentum": _RATE,
    "server-adam-lr": _POSITIVE,
    "server-adam-beta1": _RATE,
    "server-adam-beta2": _RATE,
    "server-adam-tau": _POSITIVE,
    # fractions (the config keeps them float): of the sites, of the shares
    "secagg-num-shares": _SHARE,
    "secagg-reconstruction-threshold": _SHARE,
    "secagg-delta-clip": _POSITIVE,
    "secagg-quantization-bits": Range(8, 30, integer=True),
    "secagg-timeout": _POSITIVE,
    "secagg-poll-interval": Range(0.01, 10),
    "split-val": _FRACTION,
    "split-test": _FRACTION,
    "ingest-window-center": Range(),
    "ingest-window-width": _POSITIVE,
    "ingest-central-slices": _at_least(1, integer=True),
    "ingest-min-lung-fraction": _RATE,
    "ingest-max-decoded-mb": _at_least(1, integer=True),
    "ingest-max-file-mb": _at_least(1, integer=True),
    "ingest-workers": _at_least(1, integer=True),
    "sim-client-cpus": _POSITIVE,
    "sim-client-gpus": _NON_NEGATIVE,
    "dp-noise-multiplier": _NON_NEGATIVE,
    "dp-clip": _POSITIVE,
    "dp-delta": _FRACTION,
    "max-site-weight": _at_least(0, integer=True),
}
