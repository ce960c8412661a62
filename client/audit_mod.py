"""Message audit: a ClientApp mod that checks every reply before it leaves a node.

A reply may hold only what our ClientApp is meant to send, judged against the
message it answers:

- **model arrays**: in a train reply, one float array per array the phase
  dictates, with exactly the shapes the server's own message implies (a "gan"
  delta has the shapes of the weights it received; per feature kind the
  message names (`common.evaluation.feature_kinds`: the model's, the radiomics and
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
  an external site's report (`common.evaluation.site_evaluation`: per head AUC, rates
  and their CIs, confusion counts, coarse-bin counts; per baseline head the
  paired difference model minus baseline, its CI and p; no list of scores,
  exactly the keys of the kinds the server named); Flower's status
  record with the message "Success".
- **a roster claim** (`roster`, `client.roster_signing`) beside a declared
  count: the site's roster name and a short signature, nothing else.

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

Here the mod and the choice of rules per reply; `client.audit_incoming` reads
what a reply is judged against (the phases, the incoming message),
`client.audit_checks` holds the check of each record, `client.audit_records`
the small checks they share and `AuditRefusal`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.constant import MessageTypeLegacy
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Stage,
)

# `noqa: F401`: public names of the audit before the split, importable here still.
from client.audit_checks import (
    ALLOWED_STATUS_MESSAGES,  # noqa: F401
    LANES,
    LAYOUT_KEYS,  # noqa: F401
    MAX_CIPHERTEXT_BYTES,  # noqa: F401
    MAX_PUBLIC_KEY_BYTES,  # noqa: F401
    MAX_SHARE_BYTES,  # noqa: F401
    OURS_CIPHERTEXT_BYTES,  # noqa: F401
    OURS_PUBLIC_KEY_BYTES,  # noqa: F401
    OURS_SHARE_BYTES,  # noqa: F401
    ROLES,  # noqa: F401
    _empty_arrays,
    _float_arrays,
    _layout,
    _masked_chunks,
    _masked_vectors,
    _num_examples,
    _properties,
    _roster_claim,
    _scalars,
    _secagg_stage,
    _secure_agg_stage,
    _site_report,
    _status,
)
from client.audit_incoming import (
    NODE_COST_METRICS,
    OURS,
    PHASES,
    SECAGGPLUS,
    Phase,  # noqa: F401
    Shapes,  # noqa: F401
    _Incoming,
)
from client.audit_records import AuditRefusal
from common.privacy import roster_claim
from common.secure_agg import protocol as secure

log = logging.getLogger("flwr")


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
            ("config", roster_claim.RECORD): _roster_claim,
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
        ("config", roster_claim.RECORD): _roster_claim,  # a site's signed count
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
