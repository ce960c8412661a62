"""The secure round's masked sum: adding a node's chunks, and decoding the
unmasked total to the weighted mean."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from common.secure_agg import protocol as p
from common.secure_agg.quantize import FixedPoint, decode_weight
from server.secure_agg_round import SecureAggregationError


def _add_chunks(total: np.ndarray, record: ArrayRecord, chunk: int) -> None:
    """Add a node's masked chunks to `total` (mod 2**bits of its lanes)."""
    bounds = p.chunk_bounds(total.size, chunk)
    if len(record) != len(bounds):
        raise SecureAggregationError("a masked vector with the wrong number of chunks")
    for i, (a, b) in enumerate(bounds):
        part = record[p.chunk_key(i)].numpy()
        if part.dtype != total.dtype or part.shape != (b - a,):
            raise SecureAggregationError("a masked chunk of the wrong form")
        view = total[a:b]
        np.add(view, part, out=view)


def _decode(
    total: np.ndarray, layout: p.Layout, codes: list[FixedPoint]
) -> dict[str, ArrayRecord]:
    """The unmasked sum as the weighted mean, each array in its own dtype
    (`codes`: each array's fixed-point code; the weight's is the first's
    lanes and client count)."""
    n_clients, bits = (codes[0].n_clients, codes[0].bits) if codes else (2, 32)
    weight = decode_weight(int(total[0]), n_clients, bits)
    if weight <= 0:
        raise SecureAggregationError("the nodes' weights sum to zero")
    out: dict[str, ArrayRecord] = {}
    for entry, offset, fixed in zip(
        layout.entries, layout.offsets(), codes, strict=True
    ):
        values = fixed.decode(total[offset : offset + entry.size]) / weight
        array = values.astype(np.dtype(entry.dtype)).reshape(entry.shape)
        out.setdefault(entry.record, ArrayRecord())[entry.key] = Array(array)
    return out
