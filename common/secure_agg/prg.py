"""Masks from 32-byte seeds: AES-256 in counter mode, read as uint32 or uint16.

Element i of a seed's mask in lanes of b bytes (4 for uint32, 2 for uint16)
is bytes [b i, b i + b) of the AES-CTR keystream (counter block 0 first), so
any slice of a mask can be made on its own: a client masks and a server
unmasks a vector chunk by chunk, never holding a whole mask. Each seed keys its
own AES key, so counters never repeat under one key as long as a mask is
shorter than 2**64 keystream blocks. Both lane widths read the same keystream:
a uint16 mask is the uint32 one's bytes cut in two (uniform mod 2**16 alike).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
# elements per keystream block handled at once (1 MiB of uint32 keystream)
BLOCK = 1 << 18
_ZEROS = memoryview(bytes(BLOCK * 4))
_AES_BLOCK = 16
LANES = (np.dtype(np.uint32), np.dtype(np.uint16))


def _keystream(seed: bytes, block: int):
    """Encryptor positioned at keystream block `block` (16 bytes each)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    counter = block.to_bytes(16, "big")
    return Cipher(algorithms.AES(seed), modes.CTR(counter)).encryptor()


def apply_mask(
    out: np.ndarray, seed: bytes, start: int = 0, subtract: bool = False
) -> None:
    """Add (or subtract) mod 2**32 (uint32) or mod 2**16 (uint16) the seed's
    mask elements [start, start + len(out)) to the vector `out`, in place."""
    if out.dtype not in LANES or out.ndim != 1:
        raise ValueError("masks apply to 1-d uint32 or uint16 vectors")
    width = out.dtype.itemsize
    per_block = _AES_BLOCK // width
    skip = start % per_block  # the keystream starts on a 16-byte block boundary
    encryptor = _keystream(seed, start // per_block)
    capacity = len(_ZEROS) // width  # elements per keystream step
    buffer = bytearray(len(_ZEROS) + _AES_BLOCK)
    op = np.subtract if subtract else np.add
    done, total = 0, out.size
    while done < total:
        n = min(capacity - skip, total - done)
        want = (n + skip) * width
        encryptor.update_into(_ZEROS[:want], buffer)
        stream = np.frombuffer(buffer, out.dtype, n, offset=skip * width)
        view = out[done : done + n]
        op(view, stream, out=view)
        done += n
        skip = 0


def expand(seed: bytes, start: int, count: int, dtype=np.uint32) -> np.ndarray:
    """The seed's mask elements [start, start + count) as a new vector."""
    out = np.zeros(count, dtype)
    apply_mask(out, seed, start)
    return out
