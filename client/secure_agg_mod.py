"""Client side of our secure aggregation (common.secure_agg): a ClientApp mod
with the role of Flower's `secaggplus_mod`.

Every train message must belong to a secure round: a plain train message is
refused, so a server can never get an unmasked update by skipping the
protocol. In the collect stage the mod runs the ClientApp, then replaces every
array of its reply by one masked uint32 vector in chunks (record
`secure-agg.masked`); the reply's other records (metrics, num_examples) pass
as they are. Use it like `secaggplus_mod`:
`ClientApp(client_fn=..., mods=[secure_agg_mod])`.

When the collect message asks for 16-bit lanes (`lane-bits`), every array
gets the public clip the server named for it (`clips`) and the vector goes out
as uint16 chunks, with the count of clipped values in the reply's record.

When the unmask message asks for `next-keys`, the reply also carries two fresh
public keys for the next round; their private halves wait in the node's state
(`secure-agg.ahead`) until a share-keys message that sets up a round consumes
them, once (see common.secure_agg.protocol).
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable

from common.secure_agg import keys, masking
from common.secure_agg import protocol as p
from common.secure_agg.quantize import FixedPoint, encode_weight

log = logging.getLogger("flwr")


class SecureAggRefusal(RuntimeError):
    """The mod will not take part as asked (and sends nothing of the update)."""


def secure_agg_mod(
    msg: Message, ctxt: Context, call_next: ClientAppCallable
) -> Message:
    """Run one stage of a secure round for a train message."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    config = msg.content.config_records.get(p.RECORD)
    if config is None or p.STAGE not in config:
        raise SecureAggRefusal(
            "a train message outside secure aggregation: this node sends its "
            "update only masked (server: use SecureAggWorkflow)"
        )
    stage = str(config[p.STAGE])
    state = dict(ctxt.state.config_records.get(p.STATE, ConfigRecord()))
    own = msg.metadata.dst_node_id
    opens = stage == p.SETUP or (stage == p.SHARE_KEYS and p.NEIGHBOURS in config)
    if not opens:
        _check_order(state, stage, str(config[p.ROUND_ID]))
    content = RecordDict()
    if stage == p.SETUP:
        ctxt.state.config_records.pop(p.AHEAD, None)  # the server starts afresh
        state, answer = _setup(
            config, own, keys.new_private_key(), keys.new_private_key()
        )
    elif stage == p.SHARE_KEYS:
        if opens:  # a round set up with the keys this node sent ahead
            ahead = ctxt.state.config_records.pop(p.AHEAD, None)  # used once only
            if ahead is None:
                raise SecureAggRefusal(
                    "share keys of a round set up ahead, but this node holds no "
                    "keys sent ahead (restarted?); it sits this round out"
                )
            state, _ = _setup(config, own, ahead["sk-mask"], ahead["sk-enc"])
        answer = _share_keys(state, config)
    elif stage == p.COLLECT:
        del msg.content.config_records[p.RECORD]  # the app sees its own records only
        reply = call_next(msg, ctxt)
        if reply.has_error():
            return reply
        content = reply.content
        answer = _collect(state, config, content)
    elif stage == p.UNMASK:
        answer = _unmask(state, config)
        if config.get(p.NEXT_KEYS, False):
            answer |= _keys_ahead(ctxt)
    else:
        raise SecureAggRefusal(f"unknown secure-aggregation stage {stage!r}")
    state[p.STAGE] = stage
    ctxt.state.config_records[p.STATE] = ConfigRecord(state)
    content.config_records[p.RECORD] = ConfigRecord({p.STAGE: stage, **answer})
    return Message(content, reply_to=msg)


def _check_order(state: dict, stage: str, round_id: str) -> None:
    if state.get(p.ROUND_ID) != round_id:
        raise SecureAggRefusal(f"stage {stage!r} of a round this node did not set up")
    before = p.STAGES[p.STAGES.index(stage) - 1]
    if state.get(p.STAGE) != before:
        raise SecureAggRefusal(
            f"stage {stage!r} after {state.get(p.STAGE)!r}, expected after {before!r}"
        )


def _setup(config, own: int, sk_mask: bytes, sk_enc: bytes) -> tuple[dict, dict]:
    """The round's state from the server's parameters and this node's two
    private keys (fresh, or sent ahead); the answer is their public keys."""
    neighbours = [int(n) for n in config[p.NEIGHBOURS]]
    if own not in neighbours:
        raise SecureAggRefusal("the server's neighbour list leaves this node out")
    state = {
        p.ROUND_ID: str(config[p.ROUND_ID]),
        "own": own,
        p.N_CLIENTS: int(config[p.N_CLIENTS]),
        p.THRESHOLD: int(config[p.THRESHOLD]),
        p.CLIP: float(config[p.CLIP]),
        p.MAX_WEIGHT: float(config[p.MAX_WEIGHT]),
        p.CHUNK: int(config[p.CHUNK]),
        p.NEIGHBOURS: neighbours,
        "sk-mask": sk_mask,
        "sk-enc": sk_enc,
    }
    if not 2 <= state[p.THRESHOLD] <= len(neighbours):
        raise SecureAggRefusal("threshold outside 2..neighbours")
    return state, {
        p.PK_MASK: keys.public_key(state["sk-mask"]),
        p.PK_ENC: keys.public_key(state["sk-enc"]),
    }


def _share_keys(state: dict, config) -> dict:
    own, round_id = state["own"], state[p.ROUND_ID]
    nodes = [int(n) for n in config[p.NODES]]
    pk_mask, pk_enc = list(config[p.PK_MASK]), list(config[p.PK_ENC])
    if not set(nodes) <= set(state[p.NEIGHBOURS]) or own not in nodes:
        raise SecureAggRefusal(
            "public keys of nodes that are not this node's neighbours"
        )
    if len(nodes) < state[p.THRESHOLD]:
        raise SecureAggRefusal(
            "fewer neighbours left than the reconstruction threshold"
        )
    if len(set(pk_mask + pk_enc)) != 2 * len(nodes):
        raise SecureAggRefusal("two neighbours show the same public key")
    mine = nodes.index(own)
    if (pk_mask[mine], pk_enc[mine]) != (
        keys.public_key(state["sk-mask"]),
        keys.public_key(state["sk-enc"]),
    ):
        raise SecureAggRefusal("the server shows this node's public keys wrongly")
    secret = keys.new_seed()  # this round's self-mask secret
    b_shares = keys.split_secret(secret, state[p.THRESHOLD], len(nodes))
    sk_shares = keys.split_secret(state["sk-mask"], state[p.THRESHOLD], len(nodes))
    state.update(
        {
            "secret": secret,
            "peers": nodes,
            "peer-pk-mask": pk_mask,
            "peer-pk-enc": pk_enc,
            "held": [own],
            "held-b": [b_shares[mine]],
            "held-sk": [sk_shares[mine]],
        }
    )
    dsts, blobs = [], []
    for i, node in enumerate(nodes):
        if node == own:
            continue
        plain = _pack(b_shares[i], sk_shares[i])
        blobs.append(
            keys.encrypt_shares(state["sk-enc"], pk_enc[i], round_id, own, node, plain)
        )
        dsts.append(node)
    return {p.NODES: dsts, p.CIPHERTEXTS: blobs}


def _pack(b_share: bytes, sk_share: bytes) -> bytes:
    return len(b_share).to_bytes(2, "big") + b_share + sk_share


def _unpack(plain: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(plain[:2], "big")
    return plain[2 : 2 + n], plain[2 + n :]


def _collect(state: dict, config, content: RecordDict) -> dict:
    own, round_id = state["own"], state[p.ROUND_ID]
    srcs = [int(n) for n in config[p.NODES]]
    peers = state["peers"]
    if not set(srcs) <= set(peers) - {own} or len(set(srcs)) != len(srcs):
        raise SecureAggRefusal("shares from nodes that are not this node's neighbours")
    if len(srcs) + 1 < state[p.THRESHOLD]:
        raise SecureAggRefusal("fewer neighbours shared keys than the threshold")
    for src, blob in zip(srcs, config[p.CIPHERTEXTS], strict=True):
        pk_enc = state["peer-pk-enc"][peers.index(src)]
        b_share, sk_share = _unpack(
            keys.decrypt_shares(state["sk-enc"], pk_enc, round_id, src, own, blob)
        )
        state["held"].append(src)
        state["held-b"].append(b_share)
        state["held-sk"].append(sk_share)
    pair_seeds = {
        src: keys.pairwise_seed(
            state["sk-mask"],
            state["peer-pk-mask"][peers.index(src)],
            round_id,
            own,
            src,
        )
        for src in srcs
    }
    bits = int(config.get(p.LANE_BITS, 32))
    clips = [float(c) for c in config[p.CLIPS]] if bits != 32 else None
    layout, vector, clipped = _encode(state, content, bits, clips)
    masking.mask(
        vector, own, keys.self_mask_seed(state["secret"], round_id, own), pair_seeds
    )
    masked = ArrayRecord()
    for i, (a, b) in enumerate(p.chunk_bounds(vector.size, state[p.CHUNK])):
        masked[p.chunk_key(i)] = Array(vector[a:b])
    del vector
    content.array_records[p.MASKED] = masked
    if clips is None:  # 32-bit lanes: the reply as it always was
        return layout.to_config()
    return {**layout.to_config(), p.CLIPPED: clipped}


def _num_examples(content: RecordDict) -> int:
    """The reply's example count: legacy `fitres.num_examples` or Message-API
    `num-examples`."""
    n = p.declared_examples(content)
    if n is None:
        raise SecureAggRefusal("the ClientApp's train reply has no num_examples")
    return int(n)


def _encode(
    state: dict, content: RecordDict, bits: int = 32, clips: list[float] | None = None
) -> tuple[p.Layout, np.ndarray, int]:
    """The reply's arrays as one weighted fixed-point vector of `bits`-bit
    lanes (each array clipped to its entry of `clips`, or all to the round's
    clip); the reply keeps their record names, emptied. Also returns how many
    values were clipped."""
    entries, arrays = [], []
    for name in list(content.array_records):
        record = content.array_records[name]
        for key in list(record):
            array = record[key].numpy()
            if array.dtype.kind != "f":
                raise SecureAggRefusal(
                    f"array {name}/{key} is {array.dtype}, not float"
                )
            entries.append(p.Entry(name, key, array.dtype.str, tuple(array.shape)))
            arrays.append(array)
        content.array_records[name] = ArrayRecord()
    layout = p.Layout(tuple(entries))
    if clips is None:
        clips = [state[p.CLIP]] * len(arrays)
    elif len(clips) != len(arrays):
        raise SecureAggRefusal(
            f"the server named {len(clips)} clips for {len(arrays)} arrays"
        )
    n = state[p.N_CLIENTS]
    ratio = _num_examples(content) / state[p.MAX_WEIGHT]
    try:
        weight_q = encode_weight(ratio, n, bits)
        codes = [FixedPoint(c, n, bits) for c in clips]
    except ValueError as err:
        raise SecureAggRefusal(f"cannot encode the update: {err}") from None
    unit = FixedPoint(1.0, n, bits)
    weight = weight_q / unit.levels
    # rounding bits from NumPy's global generator: an app that seeds it gets
    # the same aggregate again (the masks use their own keys)
    rng = np.random.default_rng(np.random.randint(0, 2**32, size=4))
    vector = np.empty(layout.length, unit.lane)
    vector[0] = weight_q
    clipped = 0
    for offset, array, fixed in zip(layout.offsets(), arrays, codes, strict=True):
        clipped += fixed.encode_into(
            array, vector[offset : offset + array.size], rng, factor=weight
        )
    if clipped:
        log.warning(
            "secure aggregation: %d values clipped at +-%s",
            clipped,
            f"{clips[0]:g}" if len(set(clips)) == 1 else "the arrays' clips",
        )
    return layout, vector, clipped


def _unmask(state: dict, config) -> dict:
    active = [int(n) for n in config[p.ACTIVE]]
    dead = [int(n) for n in config[p.DEAD]]
    held = state["held"]
    if set(active) & set(dead):
        raise SecureAggRefusal("a node named both active and dropped")
    if not set(active) | set(dead) <= set(held):
        raise SecureAggRefusal("shares asked for nodes this node holds none of")
    if len(active) < state[p.THRESHOLD]:
        raise SecureAggRefusal("fewer active neighbours than the threshold")
    shares = [state["held-b"][held.index(n)] for n in active]
    shares += [state["held-sk"][held.index(n)] for n in dead]
    return {p.NODES: active + dead, p.SHARES: shares}


def _keys_ahead(ctxt: Context) -> dict:
    """Fresh keys for the next round: the private halves stay in the node's
    state (replacing any older ones), the public halves go to the server."""
    sk_mask, sk_enc = keys.new_private_key(), keys.new_private_key()
    ctxt.state.config_records[p.AHEAD] = ConfigRecord(
        {"sk-mask": sk_mask, "sk-enc": sk_enc}
    )
    return {
        p.NEXT_PK_MASK: keys.public_key(sk_mask),
        p.NEXT_PK_ENC: keys.public_key(sk_enc),
    }
