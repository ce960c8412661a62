"""One secure round's bookkeeping on the server: its error, the state the
stages share, where its time and bytes went, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, RecordDict
from flwr.common.serde import config_record_to_proto, metric_record_to_proto

from common.secure_agg.quantize import FixedPoint


class SecureAggregationError(RuntimeError):
    """A round that cannot be unmasked (too many nodes lost) or is malformed."""


def content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message: array data plus serialised config/metrics."""
    total = sum(
        len(a.data) + len(k)
        for r in content.array_records.values()
        for k, a in r.items()
    )
    total += sum(
        config_record_to_proto(r).ByteSize() for r in content.config_records.values()
    )
    total += sum(
        metric_record_to_proto(r).ByteSize() for r in content.metric_records.values()
    )
    return total


@dataclass
class RoundStats:
    """Where one secure round's time and bytes went (per stage)."""

    seconds: dict[str, float] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)  # server -> nodes
    bytes_up: dict[str, int] = field(default_factory=dict)  # nodes -> server
    unmask_seconds: float = 0.0  # server: rebuilding secrets, removing masks
    lane_bits: int = 32
    asked: int = 0  # nodes sent the setup message
    uploaded: int = 0  # nodes whose masked vector is in the sum
    clipped: int = 0  # values the sites clipped to the tensor clips (16-bit lanes)
    stages: list[str] = field(default_factory=list)  # the exchanges, in order


@dataclass
class KeysAhead:
    """The public keys each site sent ahead on a round's unmask reply, for the
    next secure round only (mask key, encryption key, by node id)."""

    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)

    def take(self) -> dict[int, tuple[bytes, bytes]]:
        """All keys held, and none left: a key pair serves one round."""
        taken, self.keys = self.keys, {}
        return taken


@dataclass
class SecureResult:
    arrays: dict[str, ArrayRecord]  # record name -> aggregated arrays
    replies: dict[int, RecordDict]  # uploaders' replies (metrics; no arrays)
    dropped: set[int]
    failures: list[str]
    stats: RoundStats

    def ndarrays(self, record: str | None = None) -> list[np.ndarray]:
        """The aggregate as a list (one record's, or every record's in order)."""
        names = [record] if record else list(self.arrays)
        return [a.numpy() for n in names for a in self.arrays[n].values()]


@dataclass
class _Round:
    round_id: str
    group_id: str
    neighbours: dict[int, set[int]]
    threshold: int
    fixed: FixedPoint
    lane_bits: int = 32
    active: set[int] = field(default_factory=set)
    pk_mask: dict[int, bytes] = field(default_factory=dict)
    pk_enc: dict[int, bytes] = field(default_factory=dict)
    ahead: set[int] = field(default_factory=set)  # set up with keys sent ahead
    shared: set[int] = field(default_factory=set)  # completed share keys
    forward: dict[int, tuple[list[int], list[bytes]]] = field(default_factory=dict)
    masked_with: dict[int, list[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
