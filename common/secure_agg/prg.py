"""Masks from 32-byte seeds: AES-256 in counter mode, read as uint32.

Element i of a seed's mask is bytes [4i, 4i + 4) of the AES-CTR keystream
(counter block 0 first), so any slice of a mask can be made on its own: a
client masks and a server unmasks a vector chunk by chunk, never holding a
whole mask. Each seed keys its own AES key, so counters never repeat under one
key as long as a mask is shorter than 2**66 elements.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
# elements per keystream block handled at once (1 MiB of keystream)
BLOCK = 1 << 18
_ZEROS = memoryview(bytes(BLOCK * 4))


def _keystream(seed: bytes, start: int):
    """Encryptor positioned at element `start` (a multiple of 4 elements)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    counter = (start // 4).to_bytes(16, "big")
    return Cipher(algorithms.AES(seed), modes.CTR(counter)).encryptor()


def apply_mask(
    out: np.ndarray, seed: bytes, start: int = 0, subtract: bool = False
) -> None:
    """Add (or subtract) mod 2**32 the seed's mask elements [start, start +
    len(out)) to the uint32 vector `out`, in place."""
    if out.dtype != np.uint32 or out.ndim != 1:
        raise ValueError("masks apply to 1-d uint32 vectors")
    skip = start % 4  # the keystream starts on a 16-byte block boundary
    encryptor = _keystream(seed, start - skip)
    buffer = bytearray(BLOCK * 4 + 15)
    op = np.subtract if subtract else np.add
    done, total = 0, out.size
    while done < total:
        n = min(BLOCK - skip, total - done)
        want = (n + skip) * 4
        encryptor.update_into(_ZEROS[:want], buffer)
        stream = np.frombuffer(buffer, np.uint32, n, offset=skip * 4)
        view = out[done : done + n]
        op(view, stream, out=view)
        done += n
        skip = 0


def expand(seed: bytes, start: int, count: int) -> np.ndarray:
    """The seed's mask elements [start, start + count) as a new uint32 vector."""
    out = np.zeros(count, np.uint32)
    apply_mask(out, seed, start)
    return out
