"""What the server and the clients agree on: stages, record keys, who are
neighbours, how many shares rebuild a secret, and how arrays lie in the vector.

One round is four exchanges, as in SecAgg+ (Bell et al., 2020):

1. setup: the server names the round, its parameters and a client's
   neighbours; the client answers two fresh public keys.
2. share keys: the server forwards the neighbours' public keys; the client
   answers its self-mask secret and mask key, Shamir-shared and encrypted to
   each neighbour.
3. collect: the server forwards the encrypted shares with the train
   instructions; the client trains, and answers its update, fixed point and
   masked, in uint32 chunks (no float array leaves it). For 16-bit lanes the
   server adds `lane-bits` = 16 and one public clip per array (`clips`); the
   client then answers uint16 chunks and how many values it clipped.
4. unmask: the server names which neighbours uploaded and which dropped; the
   client answers its share of each uploader's self-mask secret and of each
   dropped neighbour's mask key (never both for one neighbour).

Keys ahead (`next-keys` in the unmask message): the client also answers two
fresh public keys for the next round and keeps their private halves. The next
round then starts at share keys, whose message carries what setup would have
(round, parameters, neighbours): three round trips instead of four. A key pair
serves one round only; a node the server holds no keys of (the first round, a
node that dropped, a restarted server) gets the setup stage as before, and a
node that lost its keys refuses share keys and drops out of that round.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

RECORD = "secure-agg"  # ConfigRecord of the protocol, both ways
MASKED = "secure-agg.masked"  # ArrayRecord of the masked uint32 chunks
STATE = "secure-agg.state"  # the client's own state between stages
AHEAD = "secure-agg.ahead"  # the client's private keys for the next round

SETUP, SHARE_KEYS, COLLECT, UNMASK = "setup", "share-keys", "collect", "unmask"
STAGES = (SETUP, SHARE_KEYS, COLLECT, UNMASK)

# record keys
STAGE = "stage"
ROUND_ID = "round-id"
N_CLIENTS = "n-clients"
THRESHOLD = "threshold"
CLIP = "clip"
MAX_WEIGHT = "max-weight"
CHUNK = "chunk-elements"
NEIGHBOURS = "neighbours"
PK_MASK = "pk-mask"
PK_ENC = "pk-enc"
NODES = "nodes"
CIPHERTEXTS = "ciphertexts"
ACTIVE = "active"
DEAD = "dead"
SHARES = "shares"
LAYOUT_RECORDS = "layout.records"
LAYOUT_KEYS = "layout.keys"
LAYOUT_DTYPES = "layout.dtypes"
LAYOUT_NDIMS = "layout.ndims"
LAYOUT_DIMS = "layout.dims"
# 16-bit lanes (collect stage only; absent: 32-bit lanes and one clip)
LANE_BITS = "lane-bits"
CLIPS = "clips"
CLIPPED = "clipped"  # the client's reply: values it clipped to the clips
# keys ahead (unmask stage): the server's ask, the client's next public keys
NEXT_KEYS = "next-keys"
NEXT_PK_MASK = "next-pk-mask"
NEXT_PK_ENC = "next-pk-enc"

# elements per uploaded chunk: 4 MiB in 32-bit lanes, far below any single-object
# limit and below glibc's largest mmap threshold (32 MiB): Flower's serialiser
# copies each array at every nesting level, and copies of larger arrays get
# freshly mapped pages every time (300 MB: 4.7 s at 2^24, 3.1 s at 2^20)
DEFAULT_CHUNK_ELEMENTS = 1 << 20


def resolve_counts(
    num_shares: int | float, threshold: int | float, n_clients: int
) -> tuple[int, int]:
    """Shares per secret (neighbourhood size, self included) and the threshold,
    with SecAgg+'s conventions: a float is a fraction of the clients (shares)
    or of the shares (threshold); the neighbourhood is odd; threshold >= 2."""
    if n_clients < 2:
        raise ValueError("secure aggregation needs at least 2 clients")
    if isinstance(num_shares, float):
        shares = round(num_shares * n_clients)
        if shares < n_clients and shares % 2 == 0:
            shares += 1
        if shares <= 2:
            shares = n_clients
    else:
        shares = num_shares
    shares = min(shares, n_clients)
    if shares < n_clients and shares % 2 == 0:
        shares += 1
    if isinstance(threshold, float):
        if not 0 < threshold <= 1:
            raise ValueError(
                f"a fractional threshold must be in (0, 1], got {threshold}"
            )
        needed = max(2, round(threshold * shares))
    else:
        needed = threshold
    if not 2 <= needed <= shares:
        raise ValueError(
            f"reconstruction threshold {needed} must be in 2..{shares} (the shares)"
        )
    return shares, needed


def neighbour_graph(node_ids: list[int], shares: int) -> dict[int, set[int]]:
    """Each node's neighbours (itself included): a ring of the shuffled nodes,
    `shares // 2` on each side; everyone when `shares` covers all nodes."""
    order = list(node_ids)
    random.SystemRandom().shuffle(order)
    n, half = len(order), shares // 2
    if shares >= n:
        return {nid: set(order) for nid in order}
    return {
        nid: {order[(i + k) % n] for k in range(-half, half + 1)}
        for i, nid in enumerate(order)
    }


@dataclass(frozen=True)
class Entry:
    """One array of the aggregated reply: where it came from and its form."""

    record: str
    key: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Layout:
    """How a client's arrays lie in the vector: element 0 is the weight, then
    every array flattened, in order."""

    entries: tuple[Entry, ...]

    @property
    def length(self) -> int:
        return 1 + sum(e.size for e in self.entries)

    def offsets(self) -> list[int]:
        out, at = [], 1
        for e in self.entries:
            out.append(at)
            at += e.size
        return out

    def to_config(self) -> dict:
        return {
            LAYOUT_RECORDS: [e.record for e in self.entries],
            LAYOUT_KEYS: [e.key for e in self.entries],
            LAYOUT_DTYPES: [e.dtype for e in self.entries],
            LAYOUT_NDIMS: [len(e.shape) for e in self.entries],
            LAYOUT_DIMS: [int(d) for e in self.entries for d in e.shape],
        }

    @classmethod
    def from_config(cls, config) -> Layout:
        dims, entries, at = list(config[LAYOUT_DIMS]), [], 0
        for record, key, dtype, ndim in zip(
            config[LAYOUT_RECORDS],
            config[LAYOUT_KEYS],
            config[LAYOUT_DTYPES],
            config[LAYOUT_NDIMS],
            strict=True,
        ):
            entries.append(Entry(record, key, dtype, tuple(dims[at : at + ndim])))
            at += ndim
        if at != len(dims):
            raise ValueError("layout dims do not match the arrays' ranks")
        return cls(tuple(entries))


def declared_examples(content) -> int | float | None:
    """A train reply's example count (its averaging weight, sent in clear):
    legacy `fitres.num_examples` or Message-API `num-examples`; None if absent."""
    for name, record in content.metric_records.items():
        for key in ("num_examples", "num-examples"):
            if key in record and name != RECORD:
                return record[key]
    return None


def chunk_bounds(length: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) of each uploaded chunk of a vector of `length` elements."""
    return [(a, min(a + chunk, length)) for a in range(0, length, chunk)]


def chunk_key(index: int) -> str:
    return f"{index:06d}"
