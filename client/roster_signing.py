"""A ClientApp mod that signs the example count a site declares (the roster).

With node config `roster-key` (this site's node-auth private key, the file
`flower-supernode --auth-supernode-private-key` reads) and `roster-site` (its
name on the coordinator's roster), every reply that declares an example count
(properties: `n_train`; train: `num_examples`) gets a config record `roster`:
the site name and a signature over (run id, server round, node id, count,
site name), see `common.privacy.roster_claim`. The server (`server.roster`)
refuses a count that is unsigned, signed by another key, or above the site's
agreed weight. Without `roster-key` replies pass unchanged.

Place it innermost (after the message audit inside the secure protocol's mod):
it signs the ClientApp's own reply, before masking.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import MessageTypeLegacy

from common.privacy import roster_claim as rc
from common.privacy.pki import load_node_private_key
from common.secure_agg import protocol as p

NODE_KEY = "roster-key"  # node config: path of the site's OpenSSH private key
NODE_SITE = "roster-site"  # node config: the site's name on the roster
PROPERTIES = "getpropertiesres.properties"


class RosterSigningError(RuntimeError):
    """The node config names a roster key this node cannot use."""


@lru_cache(maxsize=4)
def _key(path: str):
    return load_node_private_key(Path(path))  # PKIError names the file


def roster_signing_mod(
    msg: Message, ctxt: Context, call_next: ClientAppCallable
) -> Message:
    """Pass the message on; sign the reply's declared count if the node has a
    roster key."""
    reply = call_next(msg, ctxt)
    path = ctxt.node_config.get(NODE_KEY)
    if not path or not reply.has_content():
        return reply
    site = ctxt.node_config.get(NODE_SITE)
    if not isinstance(site, str) or not rc.SITE_NAME.match(site):
        raise RosterSigningError(
            f"node config {NODE_KEY} is set, {NODE_SITE} = {site!r} is not a site "
            "name (the name the coordinator gave this site in `pki add-site`)"
        )
    sign_reply(reply.content, msg, _key(str(path)), site)
    return reply


def declared_count(content: RecordDict, message_type: str) -> object | None:
    """The example count a reply declares: a properties reply's `n_train`, a
    train reply's `num_examples`; None if it declares none (an evaluate
    reply's count is no averaging weight: it stays unsigned, as the audit
    expects)."""
    if message_type == MessageTypeLegacy.GET_PROPERTIES:
        record = content.config_records.get(PROPERTIES)
        return None if record is None else record.get("n_train")
    if message_type == MessageType.TRAIN:
        return p.declared_examples(content)
    return None


def sign_reply(content: RecordDict, msg: Message, key, site: str) -> bool:
    """Add the `roster` record to `content`, the reply to `msg`, if it declares
    a count; whether it did."""
    n = declared_count(content, msg.metadata.message_type)
    if n is None:
        return False
    data = rc.payload(
        msg.metadata.run_id,
        rc.message_round(msg.metadata.group_id),
        msg.metadata.dst_node_id,  # this node: the reply's source
        n,
        site,
    )
    content.config_records[rc.RECORD] = ConfigRecord(
        {rc.SITE: site, rc.SIGNATURE: rc.sign(key, data)}
    )
    return True
