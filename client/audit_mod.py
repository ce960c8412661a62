"""Message audit: a ClientApp mod that checks every reply before it leaves a node.

A reply may hold only what our ClientApp is meant to send, judged against the
message it answers:

- **model arrays**: in a train reply, one float array per array the phase
  dictates, with exactly the shapes the server's own message implies (a "gan"
  delta has the shapes of the weights it received; per feature kind the
  message names (`common.feature_kinds`: the model's, the radiomics and
  untrained-encoder baselines', of width d), "moments" two d-sized vectors
  and "head" a (d+1)^2 matrix and a d+1 vector for training and again for
  validation slices; "logit" one z+1 vector; "eval" per head one score
  histogram per split/level/class). No other array, no integer or byte
  array, no array of another shape (a CT slice, a feature matrix, a vector
  of per-patient values) gets through.
- **SecAgg+ protocol records** (`secaggplus_configs`), stage by stage: the
  stage's keys only, with their types; node ids among those the server named;
  ciphertexts and shares of bounded size; masked vectors whose shapes are those
  of the allowed arrays.
- **our protocol's records** (`common.secure_agg`: config record `secure-agg`,
  masked `secure-agg.masked`), stage by stage, as strictly: the stage's keys
  only, its own stage name; 32-byte public keys; node ids among those the
  server named, each once; ciphertexts and shares no longer than ours are; in
  the collect stage a layout naming exactly the allowed arrays (float, with
  their shapes) and chunks of the lanes the server asked for (uint32, or
  uint16 with `lane-bits` = 16, then also a count of clipped values), in
  order, whose total length is that layout's (the weight and every allowed
  value).
- **aggregate metrics**: per phase, the named scalar metrics (losses, a count
  of clipped values; the node's seconds and peak memory for the message),
  `num_examples`, a node's role and training-set size, and
  an external site's report (`common.site_evaluation`: per head AUC, rates
  and their CIs, confusion counts, coarse-bin counts; per baseline head the
  paired difference model minus baseline, its CI and p; no list of scores,
  exactly the keys of the kinds the server named); Flower's status
  record with the message "Success".

Anything else is refused: the mod raises `AuditRefusal`, so the server gets an
error reply naming the rule and the record (never a value, never a key it does
not know) instead, and the node's log says what was refused. An exception of
the ClientApp becomes one naming only the exception type: Flower would
otherwise send the exception's text (which can hold a file path or a patient
id) to the server.

Use it on both sides of the secure protocol:
`ClientApp(client_fn=..., mods=[audit_mod, secure_dispatch_mod, audit_mod])`
(or `secaggplus_mod` / `secure_agg_mod` in the middle). The outer one sees what
actually leaves (protocol records, masked vectors, metrics); the inner one sees
the plaintext arrays before they are masked, where dtypes can still be checked.

It guards against mistakes (a metric added in passing, a debug record); code
that controls the node can bypass any mod.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.constant import MessageTypeLegacy
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)

from common import feature_kinds
from common.config import Z_DIM, ConfigError, get_preset
from common.metrics import GRID_BINS, histogram_keys
from common.secure_agg import keys as secure_keys
from common.secure_agg import protocol as secure
from common.site_evaluation import COARSE_BINS, heads_report_keys

log = logging.getLogger("flwr")

# bounds for SecAgg+ protocol bytes: an EC public key is ~215 bytes, a share of a
# private key a few hundred, a ciphertext of two shares under 1 KiB
MAX_PUBLIC_KEY_BYTES = 1024
MAX_SHARE_BYTES = 4096
MAX_CIPHERTEXT_BYTES = 8192
# our protocol's bytes, exactly as long as it makes them: raw X25519 public
# keys; a Shamir share is a 2-byte index and one 16-byte value per block of a
# 32-byte secret; a ciphertext is a nonce, two length-prefixed shares, a tag
OURS_PUBLIC_KEY_BYTES = secure_keys.KEY_BYTES
OURS_SHARE_BYTES = 2 + secure_keys.KEY_BYTES
OURS_CIPHERTEXT_BYTES = secure_keys.NONCE_BYTES + 2 + 2 * OURS_SHARE_BYTES + 16
SECAGGPLUS, OURS = "secaggplus", "fedbigbigan"

ALLOWED_STATUS_MESSAGES = frozenset({"Success"})
ROLES = frozenset({"train", "external"})

Shapes = list[tuple[int, ...]]


@dataclass(frozen=True)
class Phase:
    """What a train reply of one phase may carry."""

    # (incoming shapes, z, feature kinds) -> reply shapes
    arrays: Callable[[Shapes, int, tuple[str, ...]], Shapes]
    metrics: frozenset[str]


# Every train reply's cost on the node (client_app.node_cost): the server times
# its rounds' overhead with them. Not patient data: a site's size is sent anyway.
NODE_COST_METRICS = frozenset({"seconds", "peak-rss-mb"})


def _moments(incoming: Shapes, z: int, kinds: tuple[str, ...]) -> Shapes:
    """Each kind's per-feature mean and mean square."""
    return [(feature_kinds.dim(k, z),) for k in kinds for _ in range(2)]


def _head_statistics(incoming: Shapes, z: int, kinds: tuple[str, ...]) -> Shapes:
    """Each kind's X'X/n and X'y/n, of training then of validation slices."""
    out: Shapes = []
    for kind in kinds:
        d = feature_kinds.dim(kind, z) + 1
        out += [(d, d), (d,)] * 2
    return out


# The ClientApp's train phases (client/client_app.py). A new phase needs a line.
# The feature kinds (common.feature_kinds) are those the server's message names.
PHASES: dict[str, Phase] = {
    "gan": Phase(
        lambda incoming, z, kinds: list(incoming),
        frozenset({"d_loss", "e_loss", "g_loss", "clipped"}),
    ),
    "moments": Phase(_moments, frozenset({"clipped"})),
    "head": Phase(_head_statistics, frozenset({"clipped"})),
    "logit": Phase(lambda incoming, z, kinds: [(z + 1,)], frozenset({"clipped"})),
    "eval": Phase(  # per head, one score histogram per split, level and class
        lambda incoming, z, kinds: (
            [(GRID_BINS,)]
            * (len(histogram_keys()) * len(feature_kinds.head_names(kinds)))
        ),
        frozenset({"clipped"}),
    ),
}


class AuditRefusal(Exception):
    """One reason a reply may not leave; `public` is what the server may read."""

    def __init__(self, public: str, local: str | None = None):
        super().__init__(public)
        self.public = public
        self.local = local or public


@dataclass
class _Incoming:
    """What the reply is judged against, read before the ClientApp runs (the
    SecAgg+ mod consumes part of the incoming message)."""

    message_type: str
    protocol: str | None = None  # SECAGGPLUS, OURS, or None (a plain message)
    stage: str | None = None
    phase: str | None = None
    z: int = Z_DIM
    shapes: Shapes = field(default_factory=list)
    node_ids: frozenset[int] = frozenset()
    lane_bits: object = 32  # our collect stage: the lanes the server asked for
    kinds: tuple[str, ...] | None = ("model",)  # None: unknown kinds named

    @classmethod
    def read(cls, msg: Message) -> _Incoming:
        content = msg.content if msg.has_content() else RecordDict()
        out = cls(msg.metadata.message_type)
        secagg = content.config_records.get(RECORD_KEY_CONFIGS)
        ours = content.config_records.get(secure.RECORD)
        if secagg is not None and ours is not None:
            out.protocol = "both"  # refused: one round, one protocol
        elif ours is not None:
            out._read_ours(ours)
        elif secagg is not None and isinstance(secagg.get(Key.STAGE), str):
            out.protocol = SECAGGPLUS
            out.stage = secagg[Key.STAGE]
            if out.stage == Stage.SHARE_KEYS:
                out.node_ids = frozenset(int(k) for k in secagg if k != Key.STAGE)
            elif out.stage == Stage.UNMASK:
                out.node_ids = frozenset(
                    int(n)
                    for key in (Key.ACTIVE_NODE_ID_LIST, Key.DEAD_NODE_ID_LIST)
                    for n in secagg.get(key, [])
                )
        config = content.config_records.get(
            "fitins.config", content.config_records.get("evaluateins.config")
        )
        if config is not None:
            try:
                out.kinds = feature_kinds.parse(config.get(feature_kinds.CONFIG_KEY))
            except ValueError:
                out.kinds = None
            phase = config.get("phase")
            out.phase = phase if isinstance(phase, str) else None
            try:
                out.z = get_preset(str(config.get("preset", "tiny"))).z_dim
            except ConfigError:
                out.z = Z_DIM
        params = content.array_records.get("fitins.parameters")
        if params is not None:
            try:
                out.shapes = [_array_header(a)[1] for a in params.values()]
            except AuditRefusal:  # unreadable: no reply array can match
                out.shapes = []
        return out

    def _read_ours(self, record) -> None:
        """Stage and named node ids of our protocol's record (what the stage's
        reply may name: share-keys' neighbours, unmask's uploaders and dropped)."""
        self.protocol = OURS
        stage = record.get(secure.STAGE)
        self.stage = stage if isinstance(stage, str) else ""
        names = {
            secure.SHARE_KEYS: (secure.NODES,),
            secure.UNMASK: (secure.ACTIVE, secure.DEAD),
        }.get(self.stage, ())
        ids = [n for key in names for n in record.get(key, [])]
        self.node_ids = frozenset(
            n for n in ids if isinstance(n, int) and not isinstance(n, bool)
        )
        if self.stage == secure.COLLECT:
            self.lane_bits = record.get(secure.LANE_BITS, 32)


def audit_mod(msg: Message, context: Context, call_next) -> Message:
    """Pass the message on; let the reply leave only if the audit allows it.

    Refusing raises `AuditRefusal`: Flower then replies with an error that holds
    its text (rule and record names only). An outer mod (e.g. `secaggplus_mod`)
    could not handle an error reply in its place.
    """
    incoming = _Incoming.read(msg)
    try:
        reply = call_next(msg, context)
    except AuditRefusal:  # from an inner audit: already fit to leave
        raise
    except Exception as err:  # its text may hold paths or ids: keep it here
        log.error(
            "ClientApp raised %s (details withheld from the server)",
            type(err).__name__,
            exc_info=err,
        )
        raise AuditRefusal(
            f"ClientApp raised {type(err).__name__}; the details are in the "
            "hospital's SuperNode log"
        ) from None
    if reply.has_error():
        log.error("reply error withheld from the server: %s", reply.error.reason)
        raise AuditRefusal(
            f"ClientApp replied with error code {reply.error.code}; the details "
            "are in the hospital's SuperNode log"
        )
    refusals = audit_reply(reply.content, incoming)
    if not refusals:
        return reply
    for refusal in refusals:
        log.error("message audit refused: %s", refusal.local)
    kind = incoming.message_type + (f"/{incoming.stage}" if incoming.stage else "")
    raise AuditRefusal(
        f"message audit refused the {kind} reply: "
        + "; ".join(r.public for r in refusals)
    )


def audit_reply(content: RecordDict, incoming: _Incoming) -> list[AuditRefusal]:
    """Every reason `content` may not leave in reply to `incoming` (empty: allowed)."""
    try:
        rules = _rules_for(incoming)
    except AuditRefusal as refusal:
        return [refusal]
    refusals: list[AuditRefusal] = []
    for kind, records in (
        ("array", content.array_records),
        ("metric", content.metric_records),
        ("config", content.config_records),
    ):
        for name, record in records.items():
            check = rules.get((kind, name))
            if check is None:
                refusals.append(
                    AuditRefusal(
                        f"an unexpected {kind} record",
                        f"an unexpected {kind} record {name!r}",
                    )
                )
                continue
            try:
                check(record)
            except AuditRefusal as refusal:
                refusals.append(
                    AuditRefusal(
                        f"{kind} record {name!r}: {refusal.public}",
                        f"{kind} record {name!r}: {refusal.local}",
                    )
                )
    return refusals


def _rules_for(incoming: _Incoming) -> dict[tuple[str, str], Callable]:
    kind = incoming.message_type
    if kind == MessageTypeLegacy.GET_PROPERTIES:
        return {
            ("config", "getpropertiesres.properties"): _properties,
            ("config", "getpropertiesres.status"): _status,
        }
    if incoming.kinds is None:
        raise AuditRefusal("a message naming feature kinds the audit does not know")
    if kind == MessageType.EVALUATE:
        return {
            ("metric", "evaluateres.loss"): _scalars({"loss"}),
            ("metric", "evaluateres.num_examples"): _num_examples,
            ("config", "evaluateres.metrics"): _site_report(incoming.kinds),
            ("config", "evaluateres.status"): _status,
        }
    if kind != MessageType.TRAIN:
        raise AuditRefusal(f"no reply is allowed to a {kind!r} message")
    if incoming.protocol == "both":
        raise AuditRefusal("a train message naming two secure aggregation protocols")
    ours = incoming.protocol == OURS
    if ours and incoming.stage not in secure.STAGES:
        raise AuditRefusal("a secure aggregation stage the audit does not know")
    if ours and incoming.stage != secure.COLLECT:
        return {("config", secure.RECORD): _secure_agg_stage(incoming)}
    if incoming.protocol == SECAGGPLUS and incoming.stage in (
        Stage.SETUP,
        Stage.SHARE_KEYS,
        Stage.UNMASK,
    ):
        return {("config", RECORD_KEY_CONFIGS): _secagg_stage(incoming)}
    phase = PHASES.get(incoming.phase or "")
    if phase is None:
        raise AuditRefusal("a train reply for a phase the audit does not know")
    shapes = phase.arrays(incoming.shapes, incoming.z, incoming.kinds)
    rules = {
        ("config", "fitres.metrics"): _scalars(phase.metrics | NODE_COST_METRICS),
        ("metric", "fitres.num_examples"): _num_examples,
        ("config", "fitres.status"): _status,
    }
    if ours:  # the collect stage
        bits = incoming.lane_bits
        lanes = LANES.get(bits) if type(bits) is int else None
        if lanes is None:
            raise AuditRefusal("lanes of a width the audit does not know")
        rules[("array", "fitres.parameters")] = _empty_arrays
        rules[("config", secure.RECORD)] = _layout(shapes, bits)
        rules[("array", secure.MASKED)] = _masked_chunks(shapes, lanes)
    elif incoming.stage == Stage.COLLECT_MASKED_VECTORS:
        rules[("array", "fitres.parameters")] = _empty_arrays
        rules[("config", RECORD_KEY_CONFIGS)] = _masked_vectors(shapes)
    else:  # a plain reply, or the plaintext seen from inside the secure mod
        rules[("array", "fitres.parameters")] = _float_arrays(shapes)
    return rules


def _float_arrays(shapes: Shapes):
    def check(record) -> None:
        arrays = list(record.values())
        if len(arrays) != len(shapes):
            raise AuditRefusal(f"{len(arrays)} arrays, the phase sends {len(shapes)}")
        for i, (array, shape) in enumerate(zip(arrays, shapes, strict=True)):
            dtype, got = _array_header(array)
            if dtype.kind != "f":
                raise AuditRefusal(f"array {i} is {dtype}, only float arrays leave")
            if got != tuple(shape):
                raise AuditRefusal(f"array {i} has shape {got}, expected {shape}")

    return check


def _empty_arrays(record) -> None:
    if len(record):
        raise AuditRefusal("arrays next to masked vectors (sent unmasked)")


def _masked_vectors(shapes: Shapes):
    """Masked vectors: SecAgg+'s weight factor (1,) then one per allowed array."""
    expected = [(1,), *shapes]

    def check(record) -> None:
        _exact_keys(record, {Key.MASKED_PARAMETERS})
        vectors = record[Key.MASKED_PARAMETERS]
        if not _list_of(vectors, bytes) or len(vectors) != len(expected):
            raise AuditRefusal(
                f"{Key.MASKED_PARAMETERS}: expected {len(expected)} serialised arrays"
            )
        for i, (blob, shape) in enumerate(zip(vectors, expected, strict=True)):
            dtype, got = _npy_header(blob)
            if dtype.kind not in "iu" or got != tuple(shape):
                raise AuditRefusal(
                    f"masked vector {i} is {dtype} {got}, expected integers {shape}"
                )

    return check


def _secagg_stage(incoming: _Incoming):
    def check(record) -> None:
        if incoming.stage == Stage.SETUP:
            _exact_keys(record, {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2})
            for key in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2):
                _bounded_bytes(key, [record[key]], MAX_PUBLIC_KEY_BYTES)
        elif incoming.stage == Stage.SHARE_KEYS:
            _exact_keys(record, {Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST})
            _node_list(Key.DESTINATION_LIST, record, incoming.node_ids)
            _bounded_bytes(
                Key.CIPHERTEXT_LIST, record[Key.CIPHERTEXT_LIST], MAX_CIPHERTEXT_BYTES
            )
            _same_length(record, Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST)
        else:
            _exact_keys(record, {Key.NODE_ID_LIST, Key.SHARE_LIST})
            _node_list(Key.NODE_ID_LIST, record, incoming.node_ids)
            _bounded_bytes(Key.SHARE_LIST, record[Key.SHARE_LIST], MAX_SHARE_BYTES)
            _same_length(record, Key.NODE_ID_LIST, Key.SHARE_LIST)

    return check


def _secure_agg_stage(incoming: _Incoming):
    """Our protocol's setup, share-keys and unmask replies."""
    stage = incoming.stage

    def check(record) -> None:
        if stage == secure.SETUP:
            _exact_keys(record, {secure.STAGE, secure.PK_MASK, secure.PK_ENC})
            for key in (secure.PK_MASK, secure.PK_ENC):
                value = record[key]
                if not isinstance(value, bytes) or len(value) != OURS_PUBLIC_KEY_BYTES:
                    raise AuditRefusal(f"{key}: not a {OURS_PUBLIC_KEY_BYTES}-byte key")
        elif stage == secure.SHARE_KEYS:
            _exact_keys(record, {secure.STAGE, secure.NODES, secure.CIPHERTEXTS})
            _distinct_node_list(secure.NODES, record, incoming.node_ids)
            _bounded_bytes(
                secure.CIPHERTEXTS, record[secure.CIPHERTEXTS], OURS_CIPHERTEXT_BYTES
            )
            _same_length(record, secure.NODES, secure.CIPHERTEXTS)
        else:
            _exact_keys(record, {secure.STAGE, secure.NODES, secure.SHARES})
            _distinct_node_list(secure.NODES, record, incoming.node_ids)
            _bounded_bytes(secure.SHARES, record[secure.SHARES], OURS_SHARE_BYTES)
            _same_length(record, secure.NODES, secure.SHARES)
        _stage_name(record, stage)

    return check


def _stage_name(record, stage: str) -> None:
    if record[secure.STAGE] != stage:
        raise AuditRefusal(f"{secure.STAGE}: not the stage of the message ({stage})")


LAYOUT_KEYS = {
    secure.STAGE,
    secure.LAYOUT_RECORDS,
    secure.LAYOUT_KEYS,
    secure.LAYOUT_DTYPES,
    secure.LAYOUT_NDIMS,
    secure.LAYOUT_DIMS,
}
# our lane widths (the collect message's `lane-bits`) -> the chunks' dtype
LANES = {32: np.dtype(np.uint32), 16: np.dtype(np.uint16)}


def _layout(shapes: Shapes, lane_bits: int = 32):
    """Our collect reply's layout: exactly the allowed arrays, float, in order,
    as the legacy reply names them (`fitres.parameters`, keys 0, 1, ...); with
    16-bit lanes also the count of values clipped."""
    allowed = LAYOUT_KEYS | ({secure.CLIPPED} if lane_bits == 16 else set())

    def check(record) -> None:
        _exact_keys(record, allowed)
        _stage_name(record, secure.COLLECT)
        if lane_bits == 16 and not _count(record[secure.CLIPPED]):
            raise AuditRefusal(f"{secure.CLIPPED}: not a non-negative integer")
        try:
            layout = secure.Layout.from_config(record)
        except (ValueError, TypeError) as err:
            raise AuditRefusal("the layout does not parse") from err
        if len(layout.entries) != len(shapes):
            raise AuditRefusal(
                f"the layout names {len(layout.entries)} arrays, the phase sends "
                f"{len(shapes)}"
            )
        for i, (entry, shape) in enumerate(zip(layout.entries, shapes, strict=True)):
            if (entry.record, entry.key) != ("fitres.parameters", str(i)):
                raise AuditRefusal(f"layout entry {i} is not fitres.parameters/{i}")
            try:
                kind = np.dtype(entry.dtype).kind
            except TypeError as err:
                raise AuditRefusal(f"layout entry {i} has no numpy dtype") from err
            if kind != "f":
                raise AuditRefusal(f"layout entry {i} is not a float array")
            if entry.shape != tuple(shape):
                raise AuditRefusal(
                    f"layout entry {i} has shape {entry.shape}, expected {shape}"
                )

    return check


def _masked_chunks(shapes: Shapes, lane: np.dtype = LANES[32]):
    """Our masked upload: `lane` chunks (uint32, or uint16) 000000, 000001,
    ... of one size (the last may be shorter) holding the weight and every
    allowed value."""
    expected = 1 + sum(int(np.prod(s, dtype=np.int64)) for s in shapes)

    def check(record) -> None:
        names = list(record.keys())
        if names != [secure.chunk_key(i) for i in range(len(names))] or not names:
            raise AuditRefusal("chunks are not numbered 000000, 000001, ... in order")
        sizes = []
        for i, array in enumerate(record.values()):
            dtype, shape = _array_header(array)
            if dtype != lane or len(shape) != 1:
                raise AuditRefusal(
                    f"masked chunk {i} is {dtype} {shape}, not {lane.name}"
                )
            sizes.append(shape[0])
        if any(n != sizes[0] for n in sizes[:-1]) or sizes[-1] > sizes[0]:
            raise AuditRefusal("masked chunks of uneven sizes")
        if sum(sizes) != expected:
            raise AuditRefusal(
                f"masked chunks hold {sum(sizes)} values, the phase's arrays "
                f"{expected} (weight included)"
            )

    return check


def _properties(record) -> None:
    _exact_keys(record, {"role", "n_train"})
    if record["role"] not in ROLES:
        raise AuditRefusal("role is not 'train' or 'external'")
    if not _count(record["n_train"]):
        raise AuditRefusal("n_train is not a non-negative integer")


def _status(record) -> None:
    _exact_keys(record, {"code", "message"})
    if not isinstance(record["code"], int) or isinstance(record["code"], bool):
        raise AuditRefusal("status code is not an integer")
    if record["message"] not in ALLOWED_STATUS_MESSAGES:
        raise AuditRefusal("status message is not one of Flower's fixed texts")


def _num_examples(record) -> None:
    _exact_keys(record, {"num_examples"})
    if not _count(record["num_examples"]):
        raise AuditRefusal("num_examples is not a non-negative integer")


def _scalars(allowed: set[str] | frozenset[str]):
    """Only the named keys, each one finite number (no lists, strings or bytes)."""

    def check(record) -> None:
        _known_keys(record, allowed)
        for key, value in record.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AuditRefusal(f"{key!r} is not a single number")
            if not math.isfinite(value):
                raise AuditRefusal(f"{key!r} is not finite")

    return check


def _site_report(kinds: tuple[str, ...]):
    """An external site's aggregate report, or nothing (training sites send their
    histograms through SecAgg+): each key of `heads_report` for the kinds the
    server named (per head: `site_report`'s; per baseline head: the paired
    difference, its CI and p), with its own type."""
    allowed = frozenset(heads_report_keys(kinds))

    def check(record) -> None:
        if len(record):
            _exact_keys(record, allowed)
            _report_values(record)

    return check


def _report_values(record) -> None:
    for key, value in record.items():
        kind = key.rsplit("/", 1)[1]
        if kind.endswith("_ci"):
            ok = _list_of(value, float) and len(value) == 2
        elif kind in ("coarse_pos", "coarse_neg"):
            ok = (
                _list_of(value, int)
                and len(value) == COARSE_BINS
                and all(v >= 0 for v in value)
            )
        elif kind in ("tp", "fn", "fp", "tn"):
            ok = _count(value)
        else:  # auc, sensitivity, specificity (NaN when a class is absent)
            ok = isinstance(value, float)
        if not ok:
            raise AuditRefusal(f"{key!r} does not have the site report's form")


def _exact_keys(record, keys: set[str]) -> None:
    _known_keys(record, keys)
    missing = set(keys) - set(record.keys())
    if missing:
        raise AuditRefusal(f"missing {sorted(missing)}")


def _known_keys(record, allowed) -> None:
    extra = sorted(set(record.keys()) - set(allowed))
    if extra:
        raise AuditRefusal(
            f"{len(extra)} key(s) not allowed (allowed: {sorted(allowed)})",
            f"keys not allowed: {extra} (allowed: {sorted(allowed)})",
        )


def _node_list(key: str, record, allowed: frozenset[int]) -> None:
    ids = record[key]
    if not _list_of(ids, int) or not set(ids) <= allowed:
        raise AuditRefusal(f"{key}: not a list of the node ids the server named")


def _distinct_node_list(key: str, record, allowed: frozenset[int]) -> None:
    _node_list(key, record, allowed)
    if len(set(record[key])) != len(record[key]):
        raise AuditRefusal(f"{key}: a node id named twice")


def _bounded_bytes(key: str, values, limit: int) -> None:
    if not _list_of(values, bytes) or any(len(v) > limit for v in values):
        raise AuditRefusal(f"{key}: not bytes of at most {limit} each")


def _same_length(record, a: str, b: str) -> None:
    if len(record[a]) != len(record[b]):
        raise AuditRefusal(f"{a} and {b} differ in length")


def _list_of(value, kind: type) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    )


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _array_header(array) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape of a record's array. Arrays made from legacy `Parameters`
    carry no dtype/shape of their own: the serialised bytes are the truth."""
    if array.stype != "numpy.ndarray":
        raise AuditRefusal(f"an array serialised as {array.stype!r}, not numpy")
    return _npy_header(array.data)


def _npy_header(blob: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape of a serialised array, read from its header only."""
    try:
        f = io.BytesIO(blob)
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
    except (ValueError, OSError) as err:
        raise AuditRefusal("not a serialised numpy array") from err
    return np.dtype(dtype), tuple(shape)
