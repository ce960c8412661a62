"""The message audit's check of each record a reply may hold: model arrays,
SecAgg+ and our protocol's stage records, our layout and masked chunks,
properties, status, scalar metrics and an external site's report."""

from __future__ import annotations

import math

import numpy as np
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

from client.audit_incoming import Shapes, _Incoming
from client.audit_records import (
    AuditRefusal,
    _array_header,
    _bounded_bytes,
    _count,
    _distinct_node_list,
    _exact_keys,
    _known_keys,
    _list_of,
    _node_list,
    _npy_header,
    _same_length,
)
from common.evaluation.site_evaluation import COARSE_BINS, heads_report_keys
from common.ingest.shortcuts import SHORTCUT_NAMES
from common.ingest.site_checks import NEG, POS, SHORTCUT_ATTRIBUTE, SHORTCUT_AUC
from common.privacy import roster_claim
from common.secure_agg import keys as secure_keys
from common.secure_agg import protocol as secure

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

ALLOWED_STATUS_MESSAGES = frozenset({"Success"})
ROLES = frozenset({"train", "external"})
SITE_AGGREGATES = frozenset({POS, NEG, SHORTCUT_AUC, SHORTCUT_ATTRIBUTE})


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
            _public_keys(record, (secure.PK_MASK, secure.PK_ENC))
        elif stage == secure.SHARE_KEYS:
            _exact_keys(record, {secure.STAGE, secure.NODES, secure.CIPHERTEXTS})
            _distinct_node_list(secure.NODES, record, incoming.node_ids)
            _bounded_bytes(
                secure.CIPHERTEXTS, record[secure.CIPHERTEXTS], OURS_CIPHERTEXT_BYTES
            )
            _same_length(record, secure.NODES, secure.CIPHERTEXTS)
        else:  # unmask, with or without the next round's two public keys
            ahead = (secure.NEXT_PK_MASK, secure.NEXT_PK_ENC)
            sends_ahead = any(k in record for k in ahead)
            _exact_keys(
                record,
                {secure.STAGE, secure.NODES, secure.SHARES}
                | (set(ahead) if sends_ahead else set()),
            )
            if sends_ahead:
                _public_keys(record, ahead)
            _distinct_node_list(secure.NODES, record, incoming.node_ids)
            _bounded_bytes(secure.SHARES, record[secure.SHARES], OURS_SHARE_BYTES)
            _same_length(record, secure.NODES, secure.SHARES)
        _stage_name(record, stage)

    return check


def _public_keys(record, names) -> None:
    for key in names:
        value = record[key]
        if not isinstance(value, bytes) or len(value) != OURS_PUBLIC_KEY_BYTES:
            raise AuditRefusal(f"{key}: not a {OURS_PUBLIC_KEY_BYTES}-byte key")


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
    """Role and size; optionally the site's aggregates (`client.site_properties`):
    patients per class (counts) and its strongest shortcut AUC (one number in
    [0, 1]) with its attribute (an index into a fixed list of names)."""
    _known_keys(record, {"role", "n_train", *SITE_AGGREGATES})
    missing = {"role", "n_train"} - set(record.keys())
    if missing:
        raise AuditRefusal(f"missing {sorted(missing)}")
    if record["role"] not in ROLES:
        raise AuditRefusal("role is not 'train' or 'external'")
    for key in ("n_train", POS, NEG):
        if key in record and not _count(record[key]):
            raise AuditRefusal(f"{key} is not a non-negative integer")
    auc = record.get(SHORTCUT_AUC, 0.0)
    if not isinstance(auc, float) or not 0.0 <= auc <= 1.0:
        raise AuditRefusal(f"{SHORTCUT_AUC} is not an AUC in [0, 1]")
    index = record.get(SHORTCUT_ATTRIBUTE, 0)
    if not _count(index) or index >= len(SHORTCUT_NAMES):
        raise AuditRefusal(f"{SHORTCUT_ATTRIBUTE} is not an attribute's index")


def _roster_claim(record) -> None:
    """The site's signed claim of its count (`client.roster_signing`): its
    roster name and an ECDSA signature, nothing else."""
    _exact_keys(record, {roster_claim.SITE, roster_claim.SIGNATURE})
    site = record[roster_claim.SITE]
    if not isinstance(site, str) or not roster_claim.SITE_NAME.match(site):
        raise AuditRefusal("the roster site is not a site name")
    signature = record[roster_claim.SIGNATURE]
    if (
        not isinstance(signature, bytes)
        or len(signature) > roster_claim.MAX_SIGNATURE_BYTES
    ):
        raise AuditRefusal("the roster signature is not a short byte string")


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
