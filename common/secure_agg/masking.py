"""A client's masks on its encoded vector, and their removal from the sum.

Client u uploads  y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv)  (mod 2**32)
over the neighbours v it exchanged shares with, sign(u, v) = +1 if u < v else
-1, so each pair's masks cancel in the sum of two uploads. The server then
removes PRG(b_u) of every client that uploaded (b_u rebuilt from shares) and,
for a client u that dropped after sharing its keys, the halves of u's pairwise
masks left in its neighbours' uploads (u's mask key rebuilt from shares).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from common.secure_agg.prg import apply_mask


def mask(
    vector: np.ndarray,
    own: int,
    self_seed: bytes,
    pair_seeds: dict[int, bytes],
) -> None:
    """Add the self mask and every pairwise mask to `vector` in place."""
    if not pair_seeds:
        # with no pairwise mask, revealing the self mask would reveal the vector
        raise ValueError("refusing to mask without any pairwise mask")
    apply_mask(vector, self_seed)
    for peer, seed in pair_seeds.items():
        if peer == own:
            raise ValueError("a client has no pairwise mask with itself")
        apply_mask(vector, seed, subtract=own > peer)


def remove_self_masks(total: np.ndarray, seeds: Iterable[bytes]) -> None:
    """Subtract the self masks of the clients whose uploads are in `total`."""
    for seed in seeds:
        apply_mask(total, seed, subtract=True)


def remove_dropped_pairs(
    total: np.ndarray, dropped: int, pair_seeds: dict[int, bytes]
) -> None:
    """Cancel a dropped client's pairwise masks left in the uploads of its
    neighbours (`pair_seeds`: neighbour -> seed it masked with)."""
    for peer, seed in pair_seeds.items():
        # the neighbour added its half when peer < dropped: take it out
        apply_mask(total, seed, subtract=peer < dropped)
