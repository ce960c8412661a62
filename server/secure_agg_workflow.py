"""Server side of our secure aggregation (common.secure_agg): the role of
Flower's `SecAggPlusWorkflow`, on the Message API.

`SecureAggregator.run(grid, contents)` runs one secure round over the nodes of
`contents` (node id -> the train message content each should get) and returns
the weighted mean of their reply arrays, never one node's. `SecureAggWorkflow`
wraps it as a drop-in for `SecAggPlusWorkflow` in the legacy
`DefaultWorkflow`/`LegacyContext` path: same constructor arguments, same use of
the strategy's `configure_fit`/`aggregate_fit`.

`lane_bits=16` with one public clip per array (`tensor_clips`) halves the
upload: the sites send uint16 lanes, masked mod 2**16 (see
server.transport for where the clips come from).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import ndarrays_to_parameters
from flwr.common.serde import config_record_to_proto, metric_record_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common.secure_agg import keys, masking
from common.secure_agg import protocol as p
from common.secure_agg.quantize import FixedPoint, decode_weight, encode_weight

log = logging.getLogger("flwr")


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
    shared: set[int] = field(default_factory=set)  # completed share keys
    forward: dict[int, tuple[list[int], list[bytes]]] = field(default_factory=dict)
    masked_with: dict[int, list[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class SecureAggregator:
    """Our secure aggregation, server side (see common.secure_agg.protocol).

    `num_shares` and `reconstruction_threshold` follow SecAgg+ (an int, or a
    float fraction of the nodes / of the shares); every node's weight is
    num_examples / `max_weight` (at most 1); values are clipped to
    +-`clipping_range`; `timeout` bounds each stage (None: wait forever)."""

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
        self._setup(grid, rnd, stats)
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

    def _setup(self, grid: Grid, rnd: _Round, stats: RoundStats) -> None:
        contents = {
            nid: RecordDict(
                {
                    p.RECORD: self._config(
                        rnd,
                        p.SETUP,
                        {
                            p.N_CLIENTS: len(rnd.neighbours),
                            p.THRESHOLD: rnd.threshold,
                            p.CLIP: self.clipping_range,
                            p.MAX_WEIGHT: self.max_weight,
                            p.CHUNK: self.chunk_elements,
                            p.NEIGHBOURS: sorted(rnd.neighbours[nid]),
                        },
                    )
                }
            )
            for nid in sorted(rnd.active)
        }
        replies = self._exchange(grid, rnd, p.SETUP, contents, stats)
        for nid, content in replies.items():
            record = content.config_records[p.RECORD]
            rnd.pk_mask[nid] = cast(bytes, record[p.PK_MASK])
            rnd.pk_enc[nid] = cast(bytes, record[p.PK_ENC])
        rnd.active = set(replies)
        self._check(rnd, rnd.active, "setup")

    def _share_keys(self, grid: Grid, rnd: _Round, stats: RoundStats) -> None:
        contents = {}
        for nid in sorted(rnd.active):
            peers = sorted(rnd.neighbours[nid] & rnd.active)
            contents[nid] = RecordDict(
                {
                    p.RECORD: self._config(
                        rnd,
                        p.SHARE_KEYS,
                        {
                            p.NODES: peers,
                            p.PK_MASK: [rnd.pk_mask[n] for n in peers],
                            p.PK_ENC: [rnd.pk_enc[n] for n in peers],
                        },
                    )
                }
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
        contents = {
            nid: RecordDict(
                {
                    p.RECORD: self._config(
                        rnd,
                        p.UNMASK,
                        {
                            p.ACTIVE: sorted(rnd.neighbours[nid] & uploaded),
                            p.DEAD: sorted(rnd.neighbours[nid] & dead),
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


class SecureAggWorkflow(SecureAggregator):
    """Drop-in for `SecAggPlusWorkflow(...)(grid, legacy_context)`: asks the
    legacy strategy whom to train (`configure_fit`), runs one secure round, and
    hands `aggregate_fit` FitRes whose parameters are the secure mean (the
    nodes' own metrics as they sent them). On failure it logs and returns
    without calling `aggregate_fit`, as SecAgg+ does."""

    last_stats: RoundStats | None = None  # the last completed round's time, bytes
    last_error: str | None = None  # why the last round halted, if it did

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"expected a LegacyContext, got {type(context).__name__}")
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        current_round = int(cfg[WorkflowKey.CURRENT_ROUND])
        parameters = compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
        )
        pairs = context.strategy.configure_fit(
            current_round, parameters, context.client_manager
        )
        if not pairs:
            log.info("configure_fit: no clients selected, cancel")
            return
        proxies = {proxy.node_id: proxy for proxy, _ in pairs}
        contents = {
            proxy.node_id: compat.fitins_to_recorddict(fitins, True)
            for proxy, fitins in pairs
        }
        try:
            result = self.run(grid, contents, group_id=str(current_round))
        except SecureAggregationError as err:
            log.error("secure aggregation halted: %s", err)
            self.last_error = str(err)
            return
        self.last_stats = result.stats
        mean = ndarrays_to_parameters(result.ndarrays("fitres.parameters"))
        results = []
        for nid, content in sorted(result.replies.items()):
            fitres = compat.recorddict_to_fitres(content, keep_input=True)
            fitres.parameters = mean
            results.append((proxies[nid], fitres))
        failures: list[BaseException] = [Exception(f) for f in result.failures]
        aggregated, metrics = context.strategy.aggregate_fit(
            current_round, results, failures
        )
        if aggregated:
            context.state.array_records[MAIN_PARAMS_RECORD] = (
                compat.parameters_to_arrayrecord(aggregated, True)
            )
            context.history.add_metrics_distributed_fit(
                server_round=current_round, metrics=metrics
            )
