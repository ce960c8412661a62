"""`SecureAggregator`: the server's stages of our secure aggregation (setup,
share keys, collect, unmask) over a Flower Grid, and the checks of each upload."""

from __future__ import annotations

import logging
import secrets
import time
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid

from common.secure_agg import keys, masking
from common.secure_agg import protocol as p
from common.secure_agg.quantize import FixedPoint, decode_weight, encode_weight
from server.secure_agg_round import (
    KeysAhead,
    RoundStats,
    SecureAggregationError,
    SecureResult,
    _Round,
    content_bytes,
)
from server.secure_agg_sum import _add_chunks, _decode

log = logging.getLogger("flwr")


class SecureAggregator:
    """Our secure aggregation, server side (see common.secure_agg.protocol).

    `num_shares` and `reconstruction_threshold` follow SecAgg+ (an int, or a
    float fraction of the nodes / of the shares); every node's weight is
    num_examples / `max_weight` (at most 1); values are clipped to
    +-`clipping_range`; `timeout` bounds each stage (None: wait forever).
    With `keys_ahead` (kept by the caller from one round to the next) each
    round asks the sites for their next keys on the unmask message, and the
    nodes whose keys it holds skip the next round's setup."""

    def __init__(
        self,
        num_shares: int | float,
        reconstruction_threshold: int | float,
        *,
        max_weight: float = 1000.0,
        clipping_range: float = 8.0,
        timeout: float | None = None,
        chunk_elements: int = p.DEFAULT_CHUNK_ELEMENTS,
        lane_bits: int = 32,
        tensor_clips: list[float] | None = None,
        keys_ahead: KeysAhead | None = None,
    ) -> None:
        if max_weight <= 0 or clipping_range <= 0 or chunk_elements < 1:
            raise ValueError(
                "max_weight, clipping_range and chunk_elements must be > 0"
            )
        if lane_bits not in (16, 32):
            raise ValueError(f"lane_bits must be 16 or 32, got {lane_bits}")
        if lane_bits == 16 and not tensor_clips:
            raise ValueError("16-bit lanes need one clip per array (tensor_clips)")
        if tensor_clips and (lane_bits == 32 or min(tensor_clips) <= 0):
            raise ValueError("tensor_clips: positive, and for 16-bit lanes only")
        self.lane_bits = lane_bits
        self.tensor_clips = [float(c) for c in tensor_clips or []]
        self.num_shares = num_shares
        self.reconstruction_threshold = reconstruction_threshold
        self.max_weight = float(max_weight)
        self.clipping_range = float(clipping_range)
        self.timeout = timeout
        self.chunk_elements = int(chunk_elements)
        self.keys_ahead = keys_ahead  # None: every round sets up (four trips)

    def run(
        self, grid: Grid, contents: dict[int, RecordDict], group_id: str = ""
    ) -> SecureResult:
        """One secure round; raises SecureAggregationError if it cannot finish."""
        nodes = sorted(contents)
        shares, threshold = p.resolve_counts(
            self.num_shares, self.reconstruction_threshold, len(nodes)
        )
        rnd = _Round(
            round_id=secrets.token_hex(16),
            group_id=group_id,
            neighbours=p.neighbour_graph(nodes, shares),
            threshold=threshold,
            fixed=FixedPoint(self.clipping_range, len(nodes)),
            lane_bits=self.lane_bits,
            active=set(nodes),
        )
        stats = RoundStats(lane_bits=self.lane_bits, asked=len(nodes))
        ahead = self.keys_ahead.take() if self.keys_ahead is not None else {}
        self._setup(grid, rnd, stats, {n: k for n, k in ahead.items() if n in nodes})
        self._share_keys(grid, rnd, stats)
        total, layout, replies = self._collect(grid, rnd, contents, stats)
        uploaded = set(replies)
        stats.uploaded = len(uploaded)
        self._unmask(grid, rnd, total, uploaded, stats)
        declared = self._declared_weight(replies, len(nodes))
        if int(total[0]) != declared:  # a weight lane edited after encoding
            raise SecureAggregationError(
                "check 'weight' failed: the unmasked total weight "
                f"{decode_weight(int(total[0]), len(nodes), self.lane_bits):.9g} "
                "is not the sum of the weights the sites declared "
                f"({decode_weight(declared, len(nodes), self.lane_bits):.9g}): a "
                "site's weight lane does not match its example count; the round "
                "is discarded"
            )
        arrays = _decode(total, layout, self._codes(len(nodes), layout))
        return SecureResult(
            arrays=arrays,
            replies=replies,
            dropped=set(nodes) - uploaded,
            failures=rnd.failures,
            stats=stats,
        )

    def _codes(self, n_clients: int, layout: p.Layout) -> list[FixedPoint]:
        """The fixed-point code of each array (the weight's is clip 1)."""
        clips = self.tensor_clips or [self.clipping_range] * len(layout.entries)
        if len(clips) != len(layout.entries):
            raise SecureAggregationError(
                f"{len(clips)} tensor clips for {len(layout.entries)} arrays"
            )
        return [FixedPoint(c, n_clients, self.lane_bits) for c in clips]

    # --- stages ---------------------------------------------------------------

    def _exchange(
        self,
        grid: Grid,
        rnd: _Round,
        stage: str,
        contents: dict[int, RecordDict],
        stats,
    ) -> dict[int, RecordDict]:
        """Send each node its content, return the replies of the nodes that
        answered without error (the others join `failures`)."""
        start = time.perf_counter()
        stats.stages.append(stage)
        stats.bytes_down[stage] = sum(content_bytes(c) for c in contents.values())
        messages = [
            Message(
                content=c,
                dst_node_id=nid,
                message_type=MessageType.TRAIN,
                group_id=rnd.group_id,
            )
            for nid, c in contents.items()
        ]
        replies: dict[int, RecordDict] = {}
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            nid = reply.metadata.src_node_id
            if reply.has_error():
                rnd.failures.append(f"node {nid} ({stage}): {reply.error.reason}")
                continue
            record = reply.content.config_records.get(p.RECORD)
            if record is None or record.get(p.STAGE) != stage:
                rnd.failures.append(f"node {nid} ({stage}): not a {stage} reply")
                continue
            replies[nid] = reply.content
        for nid in set(contents) - set(replies):
            if not any(f.startswith(f"node {nid} ") for f in rnd.failures):
                rnd.failures.append(f"node {nid} ({stage}): no reply in time")
        stats.bytes_up[stage] = sum(content_bytes(c) for c in replies.values())
        stats.seconds[stage] = time.perf_counter() - start
        log.debug(
            "secure-agg %s: %d of %d answered", stage, len(replies), len(contents)
        )
        return replies

    def _config(self, rnd: _Round, stage: str, values: dict) -> ConfigRecord:
        return ConfigRecord({p.STAGE: stage, p.ROUND_ID: rnd.round_id, **values})

    def _round_values(self, rnd: _Round, nid: int) -> dict:
        """What a node needs to set up its part of the round."""
        return {
            p.N_CLIENTS: len(rnd.neighbours),
            p.THRESHOLD: rnd.threshold,
            p.CLIP: self.clipping_range,
            p.MAX_WEIGHT: self.max_weight,
            p.CHUNK: self.chunk_elements,
            p.NEIGHBOURS: sorted(rnd.neighbours[nid]),
        }

    def _setup(
        self,
        grid: Grid,
        rnd: _Round,
        stats: RoundStats,
        ahead: dict[int, tuple[bytes, bytes]],
    ) -> None:
        """The setup stage for the nodes whose keys did not come `ahead` (no
        exchange at all when every node's did)."""
        contents = {
            nid: RecordDict(
                {p.RECORD: self._config(rnd, p.SETUP, self._round_values(rnd, nid))}
            )
            for nid in sorted(rnd.active - set(ahead))
        }
        replies = (
            self._exchange(grid, rnd, p.SETUP, contents, stats) if contents else {}
        )
        for nid, content in replies.items():
            record = content.config_records[p.RECORD]
            rnd.pk_mask[nid] = cast(bytes, record[p.PK_MASK])
            rnd.pk_enc[nid] = cast(bytes, record[p.PK_ENC])
        for nid, (pk_mask, pk_enc) in ahead.items():
            rnd.pk_mask[nid], rnd.pk_enc[nid] = pk_mask, pk_enc
        rnd.ahead = set(ahead)
        rnd.active = set(replies) | rnd.ahead
        self._check(rnd, rnd.active, "setup")

    def _share_keys(self, grid: Grid, rnd: _Round, stats: RoundStats) -> None:
        contents = {}
        for nid in sorted(rnd.active):
            peers = sorted(rnd.neighbours[nid] & rnd.active)
            values = {
                p.NODES: peers,
                p.PK_MASK: [rnd.pk_mask[n] for n in peers],
                p.PK_ENC: [rnd.pk_enc[n] for n in peers],
            }
            if nid in rnd.ahead:  # no setup stage: its values come here
                values |= self._round_values(rnd, nid)
            contents[nid] = RecordDict(
                {p.RECORD: self._config(rnd, p.SHARE_KEYS, values)}
            )
        replies = self._exchange(grid, rnd, p.SHARE_KEYS, contents, stats)
        forward: dict[int, tuple[list[int], list[bytes]]] = {
            nid: ([], []) for nid in replies
        }
        for src, content in sorted(replies.items()):
            record = content.config_records[p.RECORD]
            for dst, blob in zip(record[p.NODES], record[p.CIPHERTEXTS], strict=True):
                if dst in forward and dst in rnd.neighbours[src]:
                    forward[dst][0].append(src)
                    forward[dst][1].append(blob)
        rnd.shared = set(replies)
        rnd.active = set(replies)
        rnd.forward = forward
        self._check(rnd, rnd.active, "share keys")

    def _collect(self, grid, rnd: _Round, fit: dict[int, RecordDict], stats):
        contents = {}
        for nid in sorted(rnd.active):
            srcs, blobs = rnd.forward[nid]
            rnd.masked_with[nid] = list(srcs)
            content = fit[nid]
            values: dict = {p.NODES: srcs, p.CIPHERTEXTS: blobs}
            if self.lane_bits != 32:  # 32-bit rounds stay as they always were
                values |= {p.LANE_BITS: self.lane_bits, p.CLIPS: self.tensor_clips}
            content.config_records[p.RECORD] = self._config(rnd, p.COLLECT, values)
            contents[nid] = content
        replies = self._exchange(grid, rnd, p.COLLECT, contents, stats)
        start = time.perf_counter()
        layouts: dict[int, p.Layout] = {}
        for nid, content in sorted(replies.items()):
            try:
                layouts[nid] = p.Layout.from_config(content.config_records[p.RECORD])
            except (KeyError, TypeError, ValueError) as err:
                self._drop(rnd, replies, nid, f"an unreadable layout ({err})")
        # the form most nodes sent: a malformed minority cannot set it, and a
        # node whose reply differs is the one dropped, whatever its id
        forms = [layouts[n] for n in sorted(layouts)]
        layout = max(forms, key=forms.count) if forms else None
        lane = FixedPoint(1.0, len(rnd.neighbours), rnd.lane_bits).lane
        total = np.zeros(layout.length, lane) if layout is not None else None
        for nid in sorted(layouts):
            content = replies[nid]
            problem = self._malformed(content, layouts[nid], layout, lane)
            if problem:
                self._drop(rnd, replies, nid, problem)
                continue
            if rnd.lane_bits != 32:
                stats.clipped += int(content.config_records[p.RECORD].get(p.CLIPPED, 0))
            _add_chunks(total, content.array_records.pop(p.MASKED), self.chunk_elements)
        stats.seconds["sum"] = time.perf_counter() - start
        rnd.active = set(replies)
        if layout is None or not replies:
            raise SecureAggregationError(
                "no node uploaded a well-formed masked vector; lost: "
                + "; ".join(rnd.failures)
            )
        self._check(rnd, rnd.active, "collect", needy=rnd.shared)
        return total, layout, replies

    def _malformed(self, content, got: p.Layout, layout: p.Layout, lane) -> str | None:
        """Why a node's upload cannot join the sum (None: it can): another form
        than the others', a bad declared example count, chunks of the wrong
        number, dtype or size, or arrays beside the masked vector."""
        if got != layout:
            return "arrays of another form (shapes, dtypes) than the other nodes'"
        n = p.declared_examples(content)
        if (
            isinstance(n, bool)
            or not isinstance(n, int | float)
            or not (np.isfinite(n) and 1 <= n <= self.max_weight)
        ):
            return f"a declared example count {n!r} outside [1, {self.max_weight:g}]"
        if any(len(r) for k, r in content.array_records.items() if k != p.MASKED):
            return "arrays next to its masked vector"
        record = content.array_records.get(p.MASKED)
        bounds = p.chunk_bounds(layout.length, self.chunk_elements)
        if record is None or len(record) != len(bounds):
            return "a masked vector with the wrong number of chunks"
        for i, (a, b) in enumerate(bounds):
            key = p.chunk_key(i)
            if key not in record:
                return f"no masked chunk {key}"
            chunk = record[key]
            try:
                dtype = np.dtype(chunk.dtype)
            except TypeError:
                dtype = None
            if dtype != np.dtype(lane) or tuple(chunk.shape) != (b - a,):
                return (
                    f"masked chunk {key} as {chunk.dtype} {tuple(chunk.shape)}, "
                    f"not {np.dtype(lane).name} ({b - a},)"
                )
        return None

    def _drop(self, rnd: _Round, replies: dict, nid: int, problem: str) -> None:
        """Treat a node whose upload is malformed as one that dropped out
        before uploading: its masks are rebuilt from its neighbours' shares."""
        del replies[nid]
        rnd.failures.append(f"node {nid} (collect): sent {problem}; dropped")
        log.warning("secure-agg: node %d sent %s; dropped from the round", nid, problem)

    def _declared_weight(self, replies: dict[int, RecordDict], n_clients: int) -> int:
        """The weight lane's expected sum: each uploader's weight encoded from
        the example count it declared in clear, as the clients encode it."""
        total = sum(
            encode_weight(
                float(p.declared_examples(c)) / self.max_weight,
                n_clients,
                self.lane_bits,
            )
            for c in replies.values()
        )
        return total % 2**self.lane_bits

    def _unmask(self, grid, rnd: _Round, total, uploaded: set[int], stats) -> None:
        dead = rnd.shared - uploaded
        ahead = {p.NEXT_KEYS: True} if self.keys_ahead is not None else {}
        contents = {
            nid: RecordDict(
                {
                    p.RECORD: self._config(
                        rnd,
                        p.UNMASK,
                        {
                            p.ACTIVE: sorted(rnd.neighbours[nid] & uploaded),
                            p.DEAD: sorted(rnd.neighbours[nid] & dead),
                            **ahead,
                        },
                    )
                }
            )
            for nid in sorted(uploaded)
        }
        replies = self._exchange(grid, rnd, p.UNMASK, contents, stats)
        start = time.perf_counter()
        collected: dict[int, list[bytes]] = {nid: [] for nid in rnd.shared}
        for nid, content in replies.items():
            record = content.config_records[p.RECORD]
            asked = set(contents[nid].config_records[p.RECORD][p.ACTIVE]) | set(
                contents[nid].config_records[p.RECORD][p.DEAD]
            )
            for owner, share in zip(record[p.NODES], record[p.SHARES], strict=True):
                if owner in asked:
                    collected[owner].append(cast(bytes, share))
            self._keep_ahead(nid, record)
        for owner, shares in collected.items():
            if len(shares) < rnd.threshold:
                raise SecureAggregationError(
                    f"node {owner}: {len(shares)} shares came back, "
                    f"{rnd.threshold} are needed to remove its masks"
                )
        self_seeds = [
            keys.self_mask_seed(keys.join_shares(collected[u]), rnd.round_id, u)
            for u in sorted(uploaded)
        ]
        masking.remove_self_masks(total, self_seeds)
        for u in sorted(dead):
            sk_mask = keys.join_shares(collected[u])
            if keys.public_key(sk_mask) != rnd.pk_mask[u]:
                raise SecureAggregationError(f"node {u}: its mask key did not rebuild")
            seeds = {
                v: keys.pairwise_seed(sk_mask, rnd.pk_mask[v], rnd.round_id, u, v)
                for v in sorted(uploaded)
                if u in rnd.masked_with[v]
            }
            masking.remove_dropped_pairs(total, u, seeds)
        stats.unmask_seconds = time.perf_counter() - start

    def _keep_ahead(self, nid: int, record) -> None:
        """Keep the next round's public keys a node sent on its unmask reply
        (two raw X25519 keys; anything else is ignored: that node sets up)."""
        if self.keys_ahead is None:
            return
        pair = (record.get(p.NEXT_PK_MASK), record.get(p.NEXT_PK_ENC))
        if all(isinstance(k, bytes) and len(k) == keys.KEY_BYTES for k in pair):
            self.keys_ahead.keys[nid] = cast(tuple[bytes, bytes], pair)

    def _check(
        self, rnd: _Round, alive: set[int], stage: str, needy: set[int] | None = None
    ) -> None:
        """Every node whose masks may need removing (`needy`, default the live
        ones) keeps at least threshold live neighbours; else the round stops."""
        for nid in alive if needy is None else needy:
            if len(rnd.neighbours[nid] & alive) < rnd.threshold:
                raise SecureAggregationError(
                    f"after {stage}: node {nid} has "
                    f"{len(rnd.neighbours[nid] & alive)} live neighbours, "
                    f"the reconstruction threshold is {rnd.threshold}; lost: "
                    + "; ".join(rnd.failures)
                )
