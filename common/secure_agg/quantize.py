"""Fixed point for secure sums: float arrays -> lanes of b bits (uint32 or
uint16) mod 2**b and back.

A value x in [-clip, clip] becomes round(x * scale) as a two's complement
lane. Sums wrap mod 2**b and are read back as signed, which is exact as long as
the true integer sum stays inside b bits: with n clients each contributing at
most clip * scale in magnitude, `scale = 2**(b - 1 - headroom_bits(n)) / clip`
keeps n * clip * scale < 2**(b - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# values handled per step: bounds the float64 temporaries (8 MiB each)
CHUNK = 1 << 20
# lane bits -> (unsigned lane, signed view)
LANES = {32: (np.uint32, np.int32), 16: (np.uint16, np.int16)}
# beyond these, a client keeps fewer than 2**10 (32 bits) or 2**6 (16) levels
MAX_CLIENTS = {32: 2**20, 16: 2**9 - 1}


def headroom_bits(n_clients: int) -> int:
    """Bits kept free so that the sum of `n_clients` full-range values fits."""
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    return max(1, math.ceil(math.log2(n_clients + 1)))


@dataclass(frozen=True)
class FixedPoint:
    """The fixed-point code shared by every client of one round."""

    clip: float
    n_clients: int
    bits: int = 32  # lane width: 32 (uint32) or 16 (uint16)

    def __post_init__(self) -> None:
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0, got {self.clip}")
        if self.bits not in LANES:
            raise ValueError(f"lanes are {sorted(LANES)} bits, got {self.bits}")
        if self.n_clients > MAX_CLIENTS[self.bits]:
            raise ValueError(
                f"{self.n_clients} clients leave no precision in {self.bits} bits"
            )

    @property
    def lane(self) -> type:
        return LANES[self.bits][0]

    @property
    def levels(self) -> int:
        """Integer magnitude of a value at +-clip."""
        return 2 ** (self.bits - 1 - headroom_bits(self.n_clients))

    @property
    def scale(self) -> float:
        return self.levels / self.clip

    @property
    def step(self) -> float:
        """Quantisation step of one client's value."""
        return 1.0 / self.scale

    def encode_into(
        self,
        values: np.ndarray,
        out: np.ndarray,
        rng: np.random.Generator,
        factor: float = 1.0,
    ) -> int:
        """Clip `values` (any float array, flattened) to +-clip, multiply by
        `factor` (a client's weight, at most 1), stochastically round and write
        them into the lane array `out` (uint32 or uint16, as `bits`); returns
        how many were clipped."""
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        flat = np.asarray(values).reshape(-1)
        if out.shape != flat.shape or out.dtype != self.lane:
            raise ValueError(
                f"out must be a {np.dtype(self.lane).name} array of the values' size"
            )
        clipped = 0
        for start in range(0, flat.size, CHUNK):
            part = flat[start : start + CHUNK].astype(np.float64)
            if not np.isfinite(part).all():
                raise ValueError("cannot aggregate NaN or infinite values")
            over = np.abs(part) > self.clip
            clipped += int(over.sum())
            np.clip(part, -self.clip, self.clip, out=part)
            part *= self.scale * factor
            low = np.floor(part)
            # round up with probability equal to the fraction: unbiased
            low += rng.random(part.size) < (part - low)
            out[start : start + CHUNK] = low.astype(np.int64).astype(self.lane)
        return clipped

    def decode(self, summed: np.ndarray) -> np.ndarray:
        """A sum of encoded vectors (lanes, mod 2**bits) as float64 values."""
        signed = LANES[self.bits][1]
        return summed.view(signed).astype(np.float64) * self.step


def encode_weight(ratio: float, n_clients: int, bits: int = 32) -> int:
    """A client's weight in (0, 1] as an integer with the same headroom."""
    if not 0 < ratio <= 1:
        raise ValueError(
            f"weight ratio {ratio} is outside (0, 1]: num_examples must not "
            "exceed max_weight"
        )
    levels = FixedPoint(1.0, n_clients, bits).levels
    return max(1, round(ratio * levels))


def decode_weight(summed: int, n_clients: int, bits: int = 32) -> float:
    """Sum of encoded weights as a float."""
    unsigned, signed = LANES[bits]
    return int(unsigned(summed).view(signed)) / FixedPoint(1.0, n_clients, bits).levels
